"""int8 ONNX export (QDQ, same scales as the PyTorch fake-quant model, integer kernels in ONNX Runtime),
float ONNX export of fake-quant models, and the `effdl quantize` command."""

from __future__ import annotations

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
    int8_weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and i.name.endswith("weight_int8")]
    assert len(int8_weights) == 22
    assert not any(i.name.endswith(".weight") for i in graph.initializer)  # no float copies left
    optimized = optimized_op_counts(path)
    assert optimized.get("QLinearConv") == 21 and "Conv" not in optimized and "FusedConv" not in optimized
    x = torch.randn(16, 3, 32, 32)
    got = ort_session(path).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        expected = quantized(x).numpy()
    assert np.abs(got - expected).max() <= 1e-3 * max(1.0, np.abs(expected).max())
    assert (got.argmax(1) == expected.argmax(1)).all()


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
    conv2_grids = {(q.input_scale, q.input_zero_point) for name, q in qparams.items() if name.endswith("conv2")}
    assert len(points) == 9 and set(points.values()) == conv2_grids
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
    model = quantize_(create_model("resnet20", width=0.25), FakeQuantConfig(weight_bits=4, act_bits=4))
    with pytest.raises(EffdlError, match="not int8 static"):
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
    assert summary["total"] == 256 and set(summary["layer_bits"].values()) == {8}
    assert summary["score"]["scorer"] == "imt2024" and summary["score"]["score"] > 0
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
    from effdl.cli import main
    from effdl.cli import quantize as quantize_cli
    from effdl.measure import evaluate

    seen = []
    monkeypatch.setattr(quantize_cli, "evaluate", lambda m, loader, **kw: seen.append(loader.labels) or evaluate(m, loader))
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
    assert summary["training"]["distill"] == {"alpha": 0.8, "temperature": 4.0}


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
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(checkpoint, tmp_path, capsys, args, message):
    from effdl.cli import main

    assert main(["quantize", str(checkpoint), "--device", "cpu", "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_refuses_an_already_quantized_checkpoint(checkpoint, tmp_path, capsys):
    from effdl.cli import main

    assert main(["quantize", str(checkpoint), "--method", "ternary", "--device", "cpu",
                 "--out", str(tmp_path / "t")]) == 0
    assert main(["quantize", str(tmp_path / "t" / "best.safetensors"), "--method", "ptq-int8", "--device", "cpu",
                 "--out", str(tmp_path / "again")]) == 2
    assert "already quantized" in capsys.readouterr().err


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
    assert len(compiled) == 1 and summary["training"]["compiled"] and summary["training"]["bf16"]
    assert summary["training"]["epochs"] == 1 and (out / "metrics.jsonl").exists()
    assert set(summary["layer_bits"].values()) == {4, 8}  # first and last layer at 8 bits
