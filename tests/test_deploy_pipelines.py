"""The deploy stages as library calls (effdl.pipelines.export / bench / score): options that refuse
bad values in one line, and each function measured on a tiny checkpoint; 4-bit QAT into int8 ONNX."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from effdl.checkpoint import save_model
from effdl.deploy.int8 import weight_integers
from effdl.compress.quantize import FakeQuantConfig, calibrate, quantize_
from effdl.errors import EffdlError
from effdl.models import create_model
from effdl.pipelines.bench import BenchOptions, bench_checkpoint
from effdl.pipelines.export import ExportOptions, export_checkpoint
from effdl.pipelines.score import ScoreOptions, score_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("tiny") / "tiny.safetensors", create_model("tiny_cnn"),
                      config={"dataset": "synthetic"})


@pytest.fixture(scope="module")
def tiny_w4a4(tmp_path_factory):
    """tiny_cnn with 4-bit LSQ weights and activations (8 bits first and last), calibrated."""
    from effdl.data import load_dataset

    from effdl.compress.quantize import calibration_images

    torch.manual_seed(0)
    model = quantize_(create_model("tiny_cnn"), FakeQuantConfig(weight_bits=4, act_bits=4))
    # LSQ takes its steps from the first batch it sees: a few images keep its step search to seconds.
    model.eval()(calibration_images(load_dataset("synthetic"), 4))
    return save_model(tmp_path_factory.mktemp("w4a4") / "w4a4.safetensors", model, config={"dataset": "synthetic"})


@pytest.mark.parametrize("options, message", [
    (lambda: ExportOptions(calibration="kl"), "calibration method"),
    (lambda: ExportOptions(calibration_images=0), "calibration_images must be an integer >= 1"),
    (lambda: ExportOptions(input_size=[3, 32]), "input_size must be 3 positive integers"),
    (lambda: ExportOptions(opset=3), "opset must be an integer >= 7"),
    (lambda: ExportOptions(exporter="onnxscript"), "exporter"),
    (lambda: ExportOptions(resize="squash"), "unknown resize policy 'squash'"),
    (lambda: ExportOptions(train_limit=-1), "train_limit must be an integer >= 0"),
    (lambda: BenchOptions(batch_sizes=[]), "at least one batch size"),
    (lambda: BenchOptions(batch_sizes=[1, 0]), "each batch size must be an integer >= 1"),
    (lambda: BenchOptions(repeats=0), "repeats must be"),
    (lambda: BenchOptions(warmup=-1), "warmup must be"),
    (lambda: BenchOptions(threads=0), "threads must be"),
    (lambda: BenchOptions(max_seconds=0), "max_seconds must be a positive number"),
    (lambda: BenchOptions(calibration="kl"), "calibration method"),
    (lambda: ScoreOptions(input_size=[3, 0, 32]), "input_size must be positive integers"),
    (lambda: ScoreOptions(scorer=""), "scorer must be a name"),
    (lambda: ScoreOptions(test_limit=-5), "test_limit must be"),
])
def test_options_refuse_bad_values_in_one_line(options, message):
    with pytest.raises(EffdlError, match=message) as error:
        options().validate()
    assert "\n" not in str(error.value)


def test_bad_options_are_refused_before_any_work(tiny, tmp_path):
    out = tmp_path / "never.onnx"
    with pytest.raises(EffdlError, match="opset"):
        export_checkpoint(tiny, ExportOptions(opset=1), out)
    assert not out.exists()
    with pytest.raises(EffdlError, match="unknown scorer|scorer"):
        score_checkpoint(tiny, ScoreOptions(scorer="macs"))
    with pytest.raises(EffdlError, match="checkpoint"):
        bench_checkpoint(tmp_path / "missing.safetensors", BenchOptions(onnx=False))


def test_the_stage_modules_import_without_torch():
    code = ("import sys; import effdl.pipelines.export, effdl.pipelines.bench, effdl.pipelines.score; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_export_checkpoint_writes_a_verified_float_file(tiny, tmp_path):
    out = tmp_path / "deep" / "tiny.onnx"
    result = export_checkpoint(tiny, ExportOptions(exporter="torchscript", dynamic_batch=False), out)
    assert result["onnx"] == str(out) and result["bytes"] == out.stat().st_size > 0
    assert result["check"]["rule"] == "float" and result["max_abs_diff"] < 1e-4 and not result["int8"]
    assert result["input_size"] == [3, 32, 32] and result["exporter"] == "torchscript"
    assert onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1  # static batch
    assert result["weights"] == "fp32"


def test_a_half_precision_checkpoint_exports_with_its_weights_stored_as_it_computes(tmp_path):
    """A ptq-fp16 model's file was labelled 'fp32' by the export command: the label is read from the file."""
    from effdl.compress.quantize import to_half_

    torch.manual_seed(0)
    half = save_model(tmp_path / "half.safetensors", to_half_(create_model("tiny_cnn")), config={"dataset": "synthetic"})
    result = export_checkpoint(half, ExportOptions(exporter="torchscript"), tmp_path / "half.onnx")
    assert result["weights"] == "fp16" and result["check"]["rule"] == "quantized"


def test_export_checkpoint_int8_calibrates_a_float_checkpoint(tiny, tmp_path):
    result = export_checkpoint(tiny, ExportOptions(int8=True, data="synthetic", calibration_images=64,
                                                   exporter="torchscript"), tmp_path / "int8.onnx")
    assert result["int8"] and (result["integer_convs"], result["float_convs"]) == (3, 0)
    assert (result["integer_adds"], result["float_adds"]) == (0, 0)  # a plain chain: no residual Add
    assert result["check"]["inputs"] == "images" and result["check"]["agreement"] >= 0.95


def _int8_weights(path) -> dict[str, np.ndarray]:
    return weight_integers(onnx.load(str(path)))


def test_a_4_bit_qat_checkpoint_exports_to_int8_qdq_with_its_own_grids(tiny_w4a4, tmp_path):
    """Weights keep their 4-bit integers inside int8; activations saturate at the 4-bit grid's ends."""
    from effdl.checkpoint import load_model
    from effdl.compress.quantize import calibration_images
    from effdl.compress.quantize.api import quantized_layers
    from effdl.data import load_dataset
    from effdl.deploy.onnx import ort_session

    out = tmp_path / "w4a4-int8.onnx"
    result = export_checkpoint(tiny_w4a4, ExportOptions(int8=True, exporter="torchscript"), out)
    check = result["check"]
    assert check["inputs"] == "images" and check["agreement"] >= 0.95 and check["max_steps"] <= 1.0
    assert result["integer_convs"] >= 2
    model, _ = load_model(tiny_w4a4)
    bits = {name: layer.weight_bits for name, layer in quantized_layers(model).items()}
    weights = _int8_weights(out)
    assert set(weights) == set(bits) and sorted(set(bits.values())) == [4, 8]
    for name, ints in weights.items():
        limit = 2 ** (bits[name] - 1)
        assert ints.min() >= -limit and ints.max() <= limit - 1, name
    assert any(np.abs(ints).max() > 7 for name, ints in weights.items() if bits[name] == 8)
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "Clip" in ops  # the 4-bit input grids' saturation, on the integer codes
    # Inputs beyond the calibrated range saturate at the 4-bit grids' ends in PyTorch; ONNX must too.
    images = calibration_images(load_dataset("synthetic"), 64, seed=3) * 4
    with torch.no_grad():
        expected = model.eval()(images).numpy()
    got = ort_session(out).run(None, {"input": images.numpy()})[0]
    step = np.abs(expected).max() / 127
    assert np.abs(got - expected).max() <= 2 * step
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.95


def test_4_bit_torchvision_model_exports_to_int8_and_unrepresentable_grids_are_refused(tmp_path):
    from effdl.deploy.int8 import export_int8_verified, int8_model

    torch.manual_seed(0)
    model = quantize_(create_model("tv:squeezenet1_1", num_classes=10).eval(),
                      FakeQuantConfig(weight_bits=4, act_bits=4, method="minmax"))
    images = torch.randn(64, 3, 32, 32)
    calibrate(model, images)
    path, check, exported = export_int8_verified(model, tmp_path / "sq.onnx", check_images=images,
                                                 exporter="torchscript")
    assert exported is model and check.agreement >= 0.95 and check.max_steps <= 1.0
    with torch.no_grad():
        assert float(model(images).std()) > 0  # not a constant output that any graph would match
    for config, reason in [(FakeQuantConfig(weight_bits=1, act_bits=1, first_last_bits=None), "BinaryWeight"),
                           (FakeQuantConfig(weight_bits=4, act_bits=4, method="dorefa"), "DoReFa")]:
        refused = quantize_(create_model("tiny_cnn").eval(), config)
        refused(torch.randn(8, 3, 32, 32))
        with pytest.raises(EffdlError, match=f"cannot express layer .*({reason})"):
            int8_model(refused, None)


def test_bench_checkpoint_times_pytorch_and_both_onnx_exports(tiny_w4a4, tmp_path):
    options = BenchOptions(batch_sizes=[1, 2], repeats=2, warmup=0, threads=1, device="cpu", int8=True)
    report = bench_checkpoint(tiny_w4a4, options, tmp_path / "keep")
    pairs = {(r["backend"], r["batch_size"]) for r in report["latency"]}
    assert pairs == {(b, n) for b in ("pytorch", "onnxruntime", "onnxruntime-int8") for n in (1, 2)}
    assert all(r["median_ms"] > 0 and r["throughput"] > 0 for r in report["latency"])
    assert report["sizes"]["checkpoint_bytes"] == tiny_w4a4.stat().st_size
    assert report["sizes"]["int8_onnx_bytes"] == (tmp_path / "keep" / "model-int8.onnx").stat().st_size
    assert report["sizes"]["int8_onnx_bytes"] < report["sizes"]["onnx_bytes"]
    assert report["model"] == str(tiny_w4a4) and report["input_shape"] == [3, 32, 32]
    assert set(report["int8"]["speedup_vs_fp32_onnx"]) == {"1", "2"}


def test_score_checkpoint_counts_scores_and_evaluates(tiny):
    from effdl.models.catalog import count_parameters

    report = score_checkpoint(tiny, ScoreOptions(scorer="imt2024", evaluate=True, test_limit=100, device="cpu"))
    assert report["profile"]["params"] == count_parameters(create_model("tiny_cnn")) > 0
    assert [s["scorer"] for s in report["scores"]] == ["imt2024"] and report["scores"][0]["score"] > 0
    assert report["accuracy"]["total"] == 100 and report["accuracy"]["dataset"] == "synthetic"
    assert "qualifies" in report["scores"][0]
    every = score_checkpoint("tiny_cnn", ScoreOptions(input_size=[3, 16, 16]))
    assert {s["scorer"] for s in every["scores"]} == {"micronet", "imt2021", "imt2024"} and "accuracy" not in every
    assert every["profile"]["macs"] < report["profile"]["macs"]  # measured at the smaller input
