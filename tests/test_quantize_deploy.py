"""int8 ONNX export (QDQ, same scales as the PyTorch fake-quant model, integer kernels in ONNX Runtime),
float ONNX export of fake-quant models, and the `effdl quantize` command."""

from __future__ import annotations

import copy
import json
import sys
import types

import numpy as np
import onnx
import pytest
import torch

from effdl.checkpoint import load_model, save_model
from effdl.compress.quantize import FakeQuantConfig, Int8StaticConfig, calibrate, fold_batchnorm, is_quantized, quantize_
from effdl.deploy.int8 import (
    dequantized_float_model,
    export_int8_onnx,
    insert_qdq,
    int8_model,
    optimized_op_counts,
    output_quantization_points,
    weight_integers,
)
from effdl.deploy.onnx import check_onnx, export_onnx, onnx_model, ort_session, save_onnx
from effdl.errors import EffdlError
from effdl.measure.bits import weight_bits
from effdl.models import create_model


@pytest.fixture(autouse=True)
def in_process_cli(monkeypatch):
    # effdl.cli.build_parser imports effdl.cli.__main__, which runs the CLI on import.
    monkeypatch.setitem(sys.modules, "effdl.cli.__main__", types.ModuleType("effdl.cli.__main__"))


def test_int8_onnx_has_int8_weights_runs_every_conv_on_integers_and_matches_the_fake_quant_model(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet20", width=0.25).eval()
    quantized = int8_model(model, torch.randn(64, 3, 32, 32), calibration="percentile")
    path = export_int8_onnx(quantized, tmp_path / "int8.onnx")
    graph = onnx.load(path).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("Conv") == 21 and ops.count("Gemm") == 1
    codes = [i for i in graph.initializer if i.data_type == onnx.TensorProto.UINT8 and i.name.endswith("weight_codes")]
    assert len(codes) == 22  # uint8 codes around zero point 128: no U8S8 kernel, which saturates on AVX2
    integers = weight_integers(onnx.load(path))
    assert len(integers) == 22 and all(v.min() < 0 < v.max() for v in integers.values())  # signed q, not codes
    assert not any(i.name.endswith(".weight") for i in graph.initializer)  # no float copies left
    optimized = optimized_op_counts(path)
    assert optimized.get("QLinearConv") == 21 and "Conv" not in optimized and "FusedConv" not in optimized
    # both inputs of every residual Add are integers (the shortcut reads the rounded block input), so
    # each Add runs as QLinearAdd but the last, whose sum feeds the float average pool
    assert optimized.get("QLinearAdd") == 8 and optimized.get("Add") == 1
    x = torch.randn(16, 3, 32, 32)
    got = ort_session(path).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        expected = quantized(x).numpy()
    assert np.abs(got - expected).max() <= 1e-3 * max(1.0, np.abs(expected).max())
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_a_layer_reading_one_output_of_a_split_keeps_its_own_rounding(tmp_path):
    class Halves(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.relu = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()
            self.conv, self.fc = torch.nn.Conv2d(4, 4, 1), torch.nn.Linear(8 * 8 * 8, 10)

        def forward(self, x):
            a, b = self.relu(self.stem(x)).chunk(2, dim=1)
            return self.fc(torch.cat([a, self.conv(b)], 1).flatten(1))

    torch.manual_seed(0)
    quantized = int8_model(Halves().eval(), torch.randn(64, 3, 8, 8))
    float_model, qparams = dequantized_float_model(quantized)
    proto = insert_qdq(onnx_model(float_model, input_size=(3, 8, 8)), qparams)
    (conv,) = [n for n in proto.graph.node if n.op_type == "Conv" and n.input[1].startswith("conv.")]
    assert conv.input[0] == "conv.quant.input_dq"  # the second half of the Split is rounded for it


def test_a_part_cut_from_a_quantized_model_whose_output_a_missing_layer_rounds_is_refused(tmp_path):
    torch.manual_seed(0)
    quantized = int8_model(create_model("resnet20", width=0.25).eval(), torch.randn(64, 3, 32, 32))
    first_block = quantized.layers[0][0]  # its final ReLU is rounded by the next block's conv
    with pytest.raises(EffdlError, match="outside this model"):
        export_int8_onnx(first_block, tmp_path / "part.onnx", verify=False, input_size=(4, 32, 32))
    assert not (tmp_path / "part.onnx").exists()


def test_4bit_qat_with_output_quantizers_runs_every_conv_and_add_on_integers_as_pytorch_computes(tmp_path):
    """QAT keeps BatchNorm: the output quantizer of a conv feeding a residual Add rounds the BatchNorm's
    output (the exporter folds it into the conv), and the block input is rounded where it is made."""
    from effdl.compress.quantize.layers import OutputQuantAfter, SharedInputQuant

    torch.manual_seed(0)
    model = quantize_(create_model("resnet20", width=0.25), FakeQuantConfig(weight_bits=4, act_bits=4, method="lsq"))
    model.train()
    for _ in range(3):  # LSQ initialisation, then BatchNorm statistics that are not the defaults
        model(torch.randn(32, 3, 32, 32))
    model.eval()
    wrapped = [n for n, m in model.named_modules() if isinstance(m, OutputQuantAfter)]
    # the stem, every block's bn2 and the two projection shortcuts' BatchNorms: all feed a float op
    assert len(wrapped) == 12 and {"bn1", "layers.0.0.bn2", "layers.1.0.shortcut.1"} <= set(wrapped)
    assert sum(isinstance(m, SharedInputQuant) for m in model.modules()) > 0
    images = torch.randn(64, 3, 32, 32)
    path = export_int8_onnx(int8_model(model, None), tmp_path / "qat4.onnx", check_images=images, exporter="torchscript")
    optimized = optimized_op_counts(path)
    assert optimized.get("QLinearConv") == 21 and "Conv" not in optimized and "FusedConv" not in optimized
    assert optimized.get("QLinearAdd") == 8 and optimized.get("Add") == 1
    x = torch.randn(16, 3, 32, 32)
    _assert_computes_as_pytorch(model, path, x)
    # the checkpoint rebuilds the wrappers and the folded-BatchNorm references, computes the same, and
    # exports the same rounded biases before any forward pass (the exporter reads the loaded grids)
    save_model(tmp_path / "qat4.safetensors", model)
    reloaded = load_model(tmp_path / "qat4.safetensors")[0].eval()
    assert sorted(n for n, m in reloaded.named_modules() if isinstance(m, OutputQuantAfter)) == sorted(wrapped)
    path = export_int8_onnx(int8_model(reloaded, None), tmp_path / "reloaded.onnx", verify=False)
    _assert_computes_as_pytorch(reloaded, path, x)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))


def test_layers_reading_one_tensor_share_one_trained_input_quantizer_so_the_add_before_stays_integer(tmp_path):
    """A downsampling block's input feeds its conv1 and its projection shortcut: with two LSQ steps
    trained apart, the residual Add making that input could not round its output onto one grid and
    ran in float. Tied, the step trains once and survives a checkpoint."""
    torch.manual_seed(0)
    model = quantize_(create_model("resnet20", width=0.25), FakeQuantConfig(weight_bits=4, act_bits=4, method="lsq"))
    conv1, shortcut = model.get_submodule("layers.1.0.conv1"), model.get_submodule("layers.1.0.shortcut.0")
    assert shortcut.spec["shares_act_with"] == "layers.1.0.conv1" and shortcut.act_quantizer is conv1.act_quantizer
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    model.train()
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(16, 3, 32, 32)), torch.randint(0, 10, (16,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    path = export_int8_onnx(int8_model(model, None), tmp_path / "tied.onnx", check_images=torch.randn(64, 3, 32, 32),
                            exporter="torchscript")
    optimized = optimized_op_counts(path)
    assert optimized.get("QLinearConv") == 21 and optimized.get("QLinearAdd") == 8 and optimized.get("Add") == 1
    save_model(tmp_path / "tied.safetensors", model)
    reloaded = load_model(tmp_path / "tied.safetensors")[0].eval()
    tied = reloaded.get_submodule("layers.1.0.shortcut.0").act_quantizer
    assert tied is reloaded.get_submodule("layers.1.0.conv1").act_quantizer
    assert torch.equal(tied.step, conv1.act_quantizer.step)


def _assert_computes_as_pytorch(model: torch.nn.Module, path, x: torch.Tensor) -> None:
    """ONNX Runtime's integer kernels compute what PyTorch's eval computes: the typical output equal
    to float rounding (a bias left unrounded put it ~1e-3 away), and only an activation that fell on
    a rounding boundary (float accumulation order differs between CPUs' kernels) may move one."""
    with torch.no_grad():
        expected = model(x).numpy()
    got = ort_session(path).run(None, {"input": x.numpy()})[0]
    error = np.abs(got - expected) / np.abs(expected).max()
    assert np.median(error) <= 1e-5 and error.max() <= 0.05
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.9


def test_eval_rounds_a_folded_bias_onto_the_integer_kernels_grid():
    """The shift makes BatchNorm(conv + shift) = integer conv: its folded bias lies on the int32 grid of
    scale s_in * s_w * |gamma / sigma|; training mode adds nothing."""
    from effdl.compress.quantize.fold import batchnorm_factor
    from effdl.compress.quantize.grids import act_grid, integer_bias_shift, weight_scales

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=True), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 30 * 30, 10))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(-2, 2)
        model[1].bias.uniform_(-1, 1)
    quantize_(model, FakeQuantConfig(weight_bits=4, act_bits=4, method="lsq", first_last_bits=None))
    model.eval()
    model(torch.randn(8, 3, 32, 32))  # initialises the LSQ steps
    conv, bn, fc = model[0], model[1], model[4]
    assert conv.folded_batchnorm is bn and conv.spec["batchnorm"] == "1"
    factor = batchnorm_factor(bn).detach()
    shift = integer_bias_shift(conv, bn)
    folded = (conv.bias.detach() + shift - bn.running_mean) * factor + bn.bias.detach()
    step = act_grid(conv.act_quantizer)[0] * weight_scales(conv) * factor.abs()
    assert 0 < shift.abs().max() and torch.allclose(folded / step, torch.round(folded / step), atol=1e-3)
    fc_step = act_grid(fc.act_quantizer)[0] * weight_scales(fc)
    rounded = (fc.bias.detach() + integer_bias_shift(fc)) / fc_step
    assert torch.allclose(rounded, torch.round(rounded), atol=1e-3)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        evaluated = model(x)
        model.train()
        bn.eval()  # the same BatchNorm statistics, without the integer rounding
        trained = model(x)
    assert not torch.equal(evaluated, trained) and torch.allclose(evaluated, trained, atol=0.5)


def test_a_channel_whose_batchnorm_scale_is_zero_exports_its_constant_exactly(tmp_path):
    """gamma = 0 (a slimmed channel): the folded weights are 0 and the channel outputs beta; a weight
    scale of 1e-12 would put beta ~1e11 steps from 0 on the int32 bias grid, beyond int32."""
    torch.manual_seed(0)
    model = _conv_bn_model()
    with torch.no_grad():
        model[1].weight[:3] = 0.0
        model[1].bias[:3] = torch.tensor([0.7, -0.4, 0.0])
    model = quantize_(model, FakeQuantConfig(weight_bits=4, act_bits=4, method="lsq"))
    images = torch.randn(64, 3, 32, 32)
    calibrate(model, images)
    path = export_int8_onnx(int8_model(model, None), tmp_path / "dead.onnx", check_images=images, exporter="torchscript")
    _assert_computes_as_pytorch(model, path, torch.randn(8, 3, 32, 32))


def test_a_channel_with_no_weights_exports_its_bias_and_a_bias_beyond_int32_is_refused(tmp_path):
    """All-zero weights (unstructured pruning) get a 1e-12 min-max scale: the channel outputs its bias,
    on a grid it must take from the bias. A live channel scaled almost to zero cannot hold its bias in
    int32: refused with the reason, not written wrong."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()
    with torch.no_grad():
        model[0].weight[:2] = 0.0
        model[0].bias[:2] = torch.tensor([0.5, 1.5])
    images = torch.randn(64, 3, 32, 32)
    quantized = quantize_(copy.deepcopy(model), FakeQuantConfig(weight_bits=8, act_bits=8, method="minmax"))
    calibrate(quantized, images)
    path = export_int8_onnx(int8_model(quantized, None), tmp_path / "empty.onnx", check_images=images,
                            exporter="torchscript")
    _assert_computes_as_pytorch(quantized, path, torch.randn(8, 3, 32, 32))
    # an LSQ input step trained below zero is clamped to its floor: the message names the input step
    quantized = quantize_(copy.deepcopy(model), FakeQuantConfig(weight_bits=8, act_bits=8, method="lsq"))
    calibrate(quantized, images)
    with torch.no_grad():
        quantized[4].act_quantizer.step.fill_(-0.01)
    with pytest.raises(EffdlError, match="layer 4's bias .* its input step is 1e-08"):
        export_int8_onnx(int8_model(quantized, None), tmp_path / "collapsed.onnx", exporter="torchscript")
    with torch.no_grad():
        model[0].weight[2] = 1e-9  # a live channel whose scale puts the bias ~1e10 steps out
        model[0].bias[2] = 1.0
    quantized = quantize_(model, FakeQuantConfig(weight_bits=8, act_bits=8, method="minmax"))
    calibrate(quantized, images)
    with pytest.raises(EffdlError, match="int32 grid"):
        export_int8_onnx(int8_model(quantized, None), tmp_path / "huge.onnx", exporter="torchscript")
    assert not (tmp_path / "huge.onnx").exists()


def test_without_output_quantizers_only_exact_output_points_are_quantized(tmp_path):
    """Block conv1 -> ReLU -> conv2: conv1's output may take conv2's input grid; the Add inputs may not."""
    torch.manual_seed(0)
    model = create_model("resnet20", width=0.25).eval()
    fold_batchnorm(model)
    quantize_(model, Int8StaticConfig(quantize_outputs=False))
    calibrate(model, torch.randn(64, 3, 32, 32))
    float_model, qparams = dequantized_float_model(model)
    proto = onnx_model(float_model)
    points = output_quantization_points(proto.graph, qparams)
    conv2_grids = {q.input_grid for name, q in qparams.items() if name.endswith("conv2")}
    assert sum(grid in conv2_grids for grid in points.values()) == 9
    # the inputs of the two downsampling blocks, read by conv1 and the projection shortcut on one
    # grid, are rounded once for both
    shared = {qparams[f"layers.{i}.0.conv1"].input_grid for i in (1, 2)}
    assert shared == {qparams[f"layers.{i}.0.shortcut.0"].input_grid for i in (1, 2)}
    # (the classifier's input too: its only reader is fc, so rounding it there is fc's own rounding)
    assert len(points) == 12 and set(points.values()) == conv2_grids | shared | {qparams["fc"].input_grid}
    path = save_onnx(insert_qdq(proto, qparams), tmp_path / "int8.onnx")
    assert optimized_op_counts(path).get("QLinearConv") == 9
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    got = ort_session(path).run(None, {"input": x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-3 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize(
    "config",
    [
        FakeQuantConfig(weight_bits=4, act_bits=4, method="lsq"),
        FakeQuantConfig(weight_bits=2, act_bits=2, method="minmax"),  # 2-bit grids: no ONNX QuantizeLinear
        FakeQuantConfig(weight_bits=1, act_bits=1),
    ],
)
def test_fake_quant_models_export_as_float_graphs_that_match(config, tmp_path):
    torch.manual_seed(0)
    model = quantize_(create_model("resnet20", width=0.25), config)
    model.train()
    model(torch.randn(32, 3, 32, 32))  # LSQ initialisation / running ranges
    model.eval()
    path = export_onnx(model, tmp_path / "fq.onnx")
    assert check_onnx(model, path) < 1e-4
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert "QuantizeLinear" not in ops and "Round" in ops  # the grids are computed with float ops


def test_int8_export_refuses_models_it_cannot_express():
    # DoReFa's tanh-normalised weights lie on no per-channel grid with a zero point of 0.
    model = quantize_(create_model("resnet20", width=0.25), FakeQuantConfig(weight_bits=4, act_bits=4, method="dorefa"))
    with pytest.raises(EffdlError, match="cannot express layer conv1"):
        int8_model(model, None)
    with pytest.raises(EffdlError, match="needs calibration images"):
        int8_model(create_model("resnet20", width=0.25), None)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_model(path, create_model("resnet20", width=0.25), config={"dataset": "synthetic"})
    return path


def test_cli_ptq_int8_writes_a_reloadable_run(checkpoint, tmp_path, capsys):
    from effdl.cli import main

    out = tmp_path / "int8"
    code = main(["quantize", str(checkpoint), "--method", "ptq-int8", "--calibration", "mse",
                 "--calibration-images", "64", "--device", "cpu", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["total"] == 256 and set(summary["details"]["layer_bits"].values()) == {8}
    assert summary["details"]["score"]["scorer"] == "imt2024" and summary["details"]["score"]["score"] > 0
    model, meta = load_model(out / "best.safetensors")
    assert weight_bits(model.conv1) == 8 and meta["quantize"]["method"] == "ptq-int8"
    assert model.conv1.output_quantizer is not None  # the stem feeds a residual Add (--quantize-outputs)
    from effdl.data import BatchLoader, load_dataset
    from effdl.measure import evaluate

    data = load_dataset("synthetic")
    accuracy = evaluate(model, BatchLoader.for_split(data, "test"))
    assert accuracy.correct == summary["correct"]
    assert '"method": "ptq-int8"' in capsys.readouterr().out


def test_cli_test_limit_evaluates_a_class_balanced_subset(checkpoint, tmp_path, monkeypatch):
    import effdl.measure
    from effdl.cli import main
    from effdl.measure import evaluate

    seen = []  # the command imports evaluate when it runs (lazy imports keep `effdl --help` fast)
    monkeypatch.setattr(effdl.measure, "evaluate", lambda m, loader, **kw: seen.append(loader.labels) or evaluate(m, loader))
    assert main(["quantize", str(checkpoint), "--method", "ptq-fp16", "--test-limit", "40", "--device", "cpu",
                 "--out", str(tmp_path / "fp16")]) == 0
    summary = json.loads((tmp_path / "fp16" / "summary.json").read_text())
    assert summary["total"] == 40
    assert seen and all(torch.bincount(labels, minlength=10).tolist() == [4] * 10 for labels in seen)  # not a prefix


def test_cli_qat_can_distill_from_the_float_model(checkpoint, tmp_path, monkeypatch):
    from effdl.cli import main
    from effdl.compress.distill import Distillation
    from effdl.train import Trainer

    teachers = []
    real_fit = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda trainer: teachers.extend(
        cb.teacher for cb in trainer.callbacks if isinstance(cb, Distillation)) or real_fit(trainer))
    out = tmp_path / "qat-kd"
    assert main(["quantize", str(checkpoint), "--method", "qat", "--bits", "4", "--epochs", "1", "--batch-size", "64",
                 "--calibration-images", "64", "--distill", "0.8", "--device", "cpu", "--out", str(out)]) == 0
    (teacher,) = teachers
    assert not is_quantized(teacher)  # the float model teaches the quantized one
    original, _ = load_model(checkpoint)
    assert all(torch.equal(teacher.state_dict()[k].cpu(), v) for k, v in original.state_dict().items())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["details"]["training"]["distill"] == {"alpha": 0.8, "temperature": 4.0, "method": "kd"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "qat", "--bits", "9"], "from 1 to 8"),
        (["--method", "qat", "--bits", "16"], "ptq-fp16"),
        (["--method", "xnor", "--bits", "4"], "quantizes to 1 bits"),
        (["--method", "ptq-int8", "--epochs", "2"], "--epochs fine-tunes"),
        (["--method", "ptq-int8", "--calibration-images", "10"], "at least 64 images"),
        (["--method", "qat", "--override", "fc"], "LAYER=BITS"),
        (["--method", "qat", "--distill", "0.9"], "give --epochs"),
        (["--method", "qat", "--epochs", "1", "--distill", "-1"], "--distill must be"),
        # an option the method does not read was ignored without a word: 8-bit activations all the same
        (["--method", "ptq-int8", "--act-bits", "4"], "--act-bits (act_bits) is an option of --method qat"),
        (["--method", "qat", "--calibration", "mse"], "--calibration (calibration) is an option of --method ptq-int8"),
        (["--method", "ternary", "--binary-acts"], "--method binaryconnect, xnor; --method ternary does not use it"),
        (["--method", "kmeans", "--override", "fc=8"], "--override (overrides) is an option of --method qat"),
        # a fine-tune setting without a fine-tune changed nothing
        (["--method", "qat", "--bf16"], "--bf16 (bf16) is a setting of the fine-tune; without --epochs there is none"),
        (["--method", "ptq-int8", "--compile"], "--compile (compile) is a setting of the fine-tune"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(checkpoint, tmp_path, capsys, args, message):
    from effdl.cli import main

    assert main(["quantize", str(checkpoint), "--device", "cpu", "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err.strip()  # progress lines, then the error as one line
    assert message in err.splitlines()[-1] and err.count("effdl: error") == 1 and "Traceback" not in err


def test_cli_refuses_an_already_quantized_checkpoint(checkpoint, tmp_path, capsys):
    from effdl.cli import main

    assert main(["quantize", str(checkpoint), "--method", "ternary", "--device", "cpu",
                 "--out", str(tmp_path / "t")]) == 0
    assert main(["quantize", str(tmp_path / "t" / "best.safetensors"), "--method", "ptq-int8", "--device", "cpu",
                 "--out", str(tmp_path / "again")]) == 2
    assert "already quantized" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()  # the refused --out is not left behind (it broke `effdl report runs/*`)


def test_cli_binary_methods_can_keep_the_first_and_last_layer_in_float(checkpoint, tmp_path):
    from effdl.cli import main

    out = tmp_path / "bwn"
    assert main(["quantize", str(checkpoint), "--method", "xnor", "--no-binary-acts", "--float-first-last",
                 "--device", "cpu", "--out", str(out)]) == 0
    model, _ = load_model(out / "best.safetensors")
    assert weight_bits(model.conv1) == 32 and weight_bits(model.fc) == 32
    assert weight_bits(model.layers[1][0].conv1) == 1
    assert model.layers[1][0].conv1.weight_quantizer is not None
    bn = model.layers[1][0].bn1  # statistics re-estimated for the binary weights (the fresh model's are ones)
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))


def test_cli_qat_fine_tunes_through_the_trainer_with_bf16_and_a_compiled_step(checkpoint, tmp_path, monkeypatch):
    from effdl.cli import main

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or fn)  # compiling takes minutes
    out = tmp_path / "w4a4"
    assert main(["quantize", str(checkpoint), "--method", "qat", "--bits", "4", "--epochs", "1", "--batch-size", "64",
                 "--bf16", "--compile", "--calibration-images", "64", "--device", "cpu", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(compiled) == 1 and summary["details"]["training"]["compiled"] and summary["details"]["training"]["bf16"]
    assert summary["details"]["training"]["epochs"] == 1 and (out / "metrics.jsonl").exists()
    assert set(summary["details"]["layer_bits"].values()) == {4, 8}  # first and last layer at 8 bits


# --- every quantizer kind x both export paths: parity on real images, or a clear refusal ----------


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    """tiny_cnn trained briefly on 1,000 real CIFAR-10 images (synthetic if the copy is absent),
    with 128 calibration images, and 200 test images + labels for the parity check."""
    from conftest import shared_data_root

    from effdl.compress.quantize import calibration_images
    from effdl.data import BatchLoader, limited, load_dataset

    root = shared_data_root()
    data = load_dataset("cifar10", root=root) if root else load_dataset("synthetic")
    data = limited(data, 600, 200)
    torch.manual_seed(0)
    model = create_model("tiny_cnn")
    images = calibration_images(data, len(data.train_labels))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    model.train()
    for _ in range(2):
        for start in range(0, len(images), 50):
            loss = torch.nn.functional.cross_entropy(model(images[start:start + 50]),
                                                     data.train_labels[start:start + 50])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    test = BatchLoader.for_split(data, "test", batch_size=200)
    test_images = test.normalize(data.test_images)
    return model, images[:128], test_images, data.test_labels


def _kinds():
    from effdl.compress.quantize import (BinaryConnectConfig, Float16Config, Int8WeightOnlyConfig, KMeansConfig,
                                         TernaryConfig, XnorConfig)

    return {  # name: (config or None for the float model, fold BN first, int8 export expected to work)
        "float": (None, False, True),
        "int8-static": (Int8StaticConfig(), True, True),
        "int8-weight-only": (Int8WeightOnlyConfig(), False, False),
        "qat-minmax-8": (FakeQuantConfig(weight_bits=8, act_bits=8, method="minmax"), False, True),
        "qat-minmax-8-per-tensor": (FakeQuantConfig(weight_bits=8, act_bits=8, method="minmax", per_channel=False),
                                    False, True),
        "qat-lsq-8": (FakeQuantConfig(weight_bits=8, act_bits=8, method="lsq"), False, True),
        "qat-pact-8": (FakeQuantConfig(weight_bits=8, act_bits=8, method="pact"), False, True),  # signed: codes 1..255
        "qat-dorefa-8": (FakeQuantConfig(weight_bits=8, act_bits=8, method="dorefa"), False, False),
        "qat-lsq-4": (FakeQuantConfig(weight_bits=4, act_bits=4, method="lsq", first_last_bits=None), False, True),
        "qat-lsq-4-float-outputs": (FakeQuantConfig(weight_bits=4, act_bits=4, method="lsq", quantize_outputs=False),
                                    False, True),
        "qat-pact-3": (FakeQuantConfig(weight_bits=3, act_bits=3, method="pact"), False, True),  # first, last: 8
        "qat-minmax-8-weights-only": (FakeQuantConfig(weight_bits=8, act_bits=None, method="minmax"), False, False),
        "binary": (FakeQuantConfig(weight_bits=1, act_bits=1, first_last_bits=None), False, False),
        "binaryconnect": (BinaryConnectConfig(), False, False),
        "xnor": (XnorConfig(), False, False),
        "ternary": (TernaryConfig(), False, False),
        "kmeans": (KMeansConfig(bits=4), False, False),
        "fp16": (Float16Config(), False, False),
    }


@pytest.mark.parametrize("kind", list(_kinds()))
def test_every_quantizer_kind_exports_with_accuracy_parity_or_is_refused(kind, trained_tiny, tmp_path):
    import copy

    from effdl.deploy.int8 import export_int8_verified
    from effdl.deploy.onnx import export_verified

    config, fold, int8_expected = _kinds()[kind]
    float_model, calibration, test_images, test_labels = trained_tiny
    model = copy.deepcopy(float_model)
    if fold:
        fold_batchnorm(model)
    if config is not None:
        quantize_(model, config)
        if any(hasattr(m, "observing") or hasattr(m, "initialize") for m in model.modules()):
            calibrate(model, calibration)
    model.eval()

    def accuracy(predict) -> float:
        return float((predict(test_images).argmax(1) == test_labels).float().mean())

    with torch.no_grad():
        torch_acc = accuracy(lambda x: model(x).float())
    # fp32 export: every kind (its fake-quant arithmetic in float ops), checked on real images.
    # The tracing exporter: 10-30x faster than dynamo, and the graphs it writes are the same ops.
    path, check = export_verified(model, tmp_path / "fp32.onnx", images=calibration, exporter="torchscript")
    assert check.inputs == "images" and (check.agreement is None or check.agreement >= 0.95)
    session = ort_session(path)
    onnx_acc = accuracy(lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0]))
    assert abs(onnx_acc - torch_acc) <= 0.015, (kind, torch_acc, onnx_acc)
    # int8 export: parity with the int8 PyTorch model, or a clear refusal and no file.
    out = tmp_path / "int8.onnx"
    if not int8_expected:
        with pytest.raises(EffdlError, match="int8 export (cannot express layer|of a float16)"):
            export_int8_verified(model, out, check_images=calibration, exporter="torchscript")
        assert not out.exists()
        return
    path, check, int8 = export_int8_verified(model, out, calibration, check_images=calibration, exporter="torchscript")
    assert check.rule == "quantized" and check.agreement >= 0.95 and check.max_steps <= 8
    # PyTorch's eval rounds biases as the integer kernels do (grids.integer_bias_shift): without that,
    # the median output sat 1.3-1.5 steps away; only float-accumulation ties differ now
    assert check.median_steps <= 0.5, (kind, check)
    with torch.no_grad():
        int8_acc = accuracy(lambda x: int8(x))
    session = ort_session(path)
    onnx_acc = accuracy(lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0]))
    assert abs(onnx_acc - int8_acc) <= 0.015, (kind, int8_acc, onnx_acc)
    if kind != "float":  # a quantized model is exported as it is, not quantized again
        assert int8 is model


def _conv_bn_model() -> torch.nn.Module:
    """The issue's case: BatchNorm scales a quantized conv's output by 2 / sqrt(0.04) = 10."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    with torch.no_grad():
        model[1].weight.fill_(2.0)
        model[1].running_var.fill_(0.04)
        model[1].bias.uniform_(-1, 1)
    return model.eval()


def test_qat_batchnorm_folds_into_the_int8_grid_not_onto_clipped_integers(tmp_path):
    torch.manual_seed(0)
    model = quantize_(_conv_bn_model(), FakeQuantConfig(weight_bits=8, act_bits=8, method="minmax"))
    images = torch.randn(128, 3, 32, 32)
    calibrate(model, images)
    path = export_int8_onnx(int8_model(model, None), tmp_path / "qat.onnx", check_images=images, exporter="torchscript")
    conv_int8 = weight_integers(onnx.load(path))["0"]
    latent = model[0].weight.detach()
    expected = torch.round(latent / (latent.abs().amax((1, 2, 3), keepdim=True) / 127)).numpy()
    assert np.array_equal(conv_int8, expected)  # the fake-quant model's integers, not saturated ones
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        want = model(x).numpy()
    got = ort_session(path).run(None, {"input": x.numpy()})[0]
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()


def test_a_weight_the_exporter_changed_is_refused_and_no_file_is_left(tmp_path, monkeypatch):
    from effdl.deploy import int8 as int8_module

    torch.manual_seed(0)
    model = quantize_(_conv_bn_model(), FakeQuantConfig(weight_bits=8, act_bits=8, method="minmax"))
    calibrate(model, torch.randn(128, 3, 32, 32))
    monkeypatch.setattr(int8_module, "find_conv_bn_pairs", lambda m: [])  # the exporter folds the BN instead
    out = tmp_path / "bad.onnx"
    # The tracing exporter also renames the folded weight; either way the export is refused.
    with pytest.raises(EffdlError, match="no longer on its int8 grid|could not find the ONNX node of layer"):
        export_int8_onnx(model, out, exporter="torchscript")
    assert list(tmp_path.iterdir()) == []
    # The guard itself: a weight moved off its grid after export is refused, not clipped onto it.
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 30 * 30, 2)).eval()
    float_model, qparams = dequantized_float_model(int8_model(plain, torch.randn(64, 3, 32, 32)))
    proto = onnx_model(float_model, exporter="torchscript")
    weight = next(t for t in proto.graph.initializer if t.name == "0.weight")
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 1.3, "0.weight"))
    with pytest.raises(EffdlError, match="weight of layer 0 is no longer on its int8 grid"):
        insert_qdq(proto, qparams)


def test_a_rejected_export_is_deleted_and_an_existing_file_kept(tmp_path):
    from effdl.deploy.onnx import export_verified

    torch.manual_seed(0)
    model = int8_model(_conv_bn_model(), torch.randn(64, 3, 32, 32))
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous")
    float_model, qparams = dequantized_float_model(model)

    def wrong(proto: onnx.ModelProto) -> onnx.ModelProto:  # a QDQ graph whose last layer's integers are negated
        proto = insert_qdq(proto, qparams)
        fc = next(t for t in proto.graph.initializer if t.name == "5.quant.weight_codes")
        negated = (256 - onnx.numpy_helper.to_array(fc).astype(np.int32)).clip(0, 255).astype(np.uint8)  # 128 + q -> 128 - q
        fc.CopyFrom(onnx.numpy_helper.from_array(negated, fc.name))
        return proto

    with pytest.raises(EffdlError, match="ONNX Runtime disagrees with PyTorch.*nothing written"):
        export_verified(float_model, out, reference=model, images=torch.randn(64, 3, 32, 32), postprocess=wrong,
                        exporter="torchscript")
    assert out.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
