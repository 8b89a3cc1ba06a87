"""ONNX export and verification, latency measurement, and the `effdl export` / `effdl bench` commands."""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from effdl.checkpoint import save_model
from effdl.cli import main
from effdl.deploy import check_onnx, export_onnx, ort_session
from effdl.errors import EffdlError
from effdl.deploy.bench import BenchResult
from effdl.measure.latency import LatencyResult, measure_latency, onnx_latency, torch_latency
from effdl.models import create_model


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return create_model("resnet20", width=0.5).eval()


@pytest.fixture(scope="module")
def resnet20_onnx(resnet20, tmp_path_factory):
    """resnet20 exported once for the module; the post-processor tags the graph to prove it ran."""

    def tag(proto: onnx.ModelProto) -> onnx.ModelProto:
        proto.metadata_props.add(key="effdl_test", value="postprocessed")
        return proto

    folder = tmp_path_factory.mktemp("onnx")
    return export_onnx(resnet20, folder / "resnet20.onnx", postprocess=tag)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    return save_model(tmp_path / "tiny.safetensors", create_model("tiny_cnn"))


def test_export_resnet20_matches_pytorch_at_any_batch(resnet20, resnet20_onnx):
    assert [p.name for p in resnet20_onnx.parent.iterdir()] == ["resnet20.onnx"]  # no temp file left
    proto = onnx.load(str(resnet20_onnx))
    onnx.checker.check_model(proto)
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata["effdl_test"] == "postprocessed" and metadata["effdl.exporter"] == "dynamo"
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert check_onnx(resnet20, resnet20_onnx) < 1e-4

    session = ort_session(resnet20_onnx, threads=1)
    x = torch.randn(3, 3, 32, 32)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, resnet20(x).numpy(), atol=1e-4, rtol=1e-3)


def test_export_torchvision_mobilenet_v2(tmp_path):
    torch.manual_seed(0)
    model = create_model("tv:mobilenet_v2", num_classes=10)
    path = export_onnx(model, tmp_path / "mbv2.onnx", input_size=(1, 3, 32, 32), dynamic_batch=False)
    proto = onnx.load(str(path))
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 32]
    assert check_onnx(model, path) < 1e-4


def test_data_dependent_control_flow_falls_back_to_the_tracing_exporter(tmp_path):
    class Gated(nn.Module):
        """Branches on a buffer's value, as quantizers do; torch.export cannot capture that."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.register_buffer("enabled", torch.tensor(True))

        def forward(self, x):
            x = self.conv(x)
            if bool(self.enabled):
                x = x.abs()
            return x.mean((2, 3))

    model = Gated()
    path = export_onnx(model, tmp_path / "gated.onnx")
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert metadata["effdl.exporter"] == "torchscript"
    assert check_onnx(model, path) < 1e-5
    with pytest.raises(EffdlError, match="unknown ONNX exporter"):
        export_onnx(model, tmp_path / "x.onnx", exporter="jit")


def test_check_detects_tampered_weights(resnet20, resnet20_onnx, tmp_path):
    proto = onnx.load(str(resnet20_onnx))
    biggest = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    values = numpy_helper.to_array(biggest).copy()
    values += 0.5
    biggest.CopyFrom(numpy_helper.from_array(values, biggest.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(proto, str(tampered))
    with pytest.raises(EffdlError, match="differs from PyTorch"):
        check_onnx(resnet20, tampered)


def test_check_detects_a_different_model(resnet20_onnx):
    torch.manual_seed(1)
    other = create_model("resnet20", width=0.5).eval()
    with pytest.raises(EffdlError, match="max abs diff"):
        check_onnx(other, resnet20_onnx)


def test_an_invalid_graph_from_the_dynamo_exporter_falls_back_to_tracing(tmp_path, monkeypatch):
    from effdl.deploy import onnx as onnx_module

    def dangling(model, example, dynamic_batch, opset, outputs):  # a node reading a value nothing produces
        proto = onnx_module._export_dynamo(model, example, dynamic_batch, opset, outputs)
        proto.graph.node[0].input[0] = "nowhere"
        return proto

    monkeypatch.setitem(onnx_module.EXPORTERS, "dynamo", dangling)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten())
    path = export_onnx(model, tmp_path / "fallback.onnx")
    assert {p.key: p.value for p in onnx.load(str(path)).metadata_props}["effdl.exporter"] == "torchscript"
    assert check_onnx(model, path) < 1e-5
    with pytest.raises(EffdlError, match="dynamo: .*nowhere"):
        export_onnx(model, tmp_path / "only-dynamo.onnx", exporter="dynamo")


def test_unexportable_model_and_bad_files_give_effdl_errors(tmp_path):
    class Broken(nn.Module):
        def forward(self, x):
            raise ValueError("no forward for you")

    with pytest.raises(EffdlError, match="ONNX export of Broken failed .*no forward for you"):
        export_onnx(Broken(), tmp_path / "broken.onnx")
    assert not list(tmp_path.iterdir())
    with pytest.raises(EffdlError, match="not found"):
        ort_session(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all")
    with pytest.raises(EffdlError, match="not a runnable ONNX model"):
        ort_session(garbage)


def test_latency_statistics_are_consistent():
    result = measure_latency(lambda _: time.sleep(0.002), None, warmup=1, repeats=15, batch_size=4)
    assert result.repeats == len(result.times_ms) == 15
    assert result.min_ms <= result.p10_ms <= result.median_ms <= result.p90_ms <= result.max_ms
    assert result.min_ms >= 2.0  # each call sleeps 2 ms
    assert result.min_ms <= result.mean_ms <= result.max_ms and result.std_ms >= 0
    assert 0 <= result.iqr_ms <= result.max_ms - result.min_ms
    assert result.throughput == pytest.approx(4 / (result.median_ms / 1e3))
    assert "times_ms" not in result.to_dict() and result.to_dict()["throughput"] == result.throughput


def test_latency_time_cap_and_bad_arguments():
    capped = measure_latency(lambda _: time.sleep(0.02), None, warmup=0, repeats=1000, max_seconds=0.1)
    assert 3 <= capped.repeats < 20
    with pytest.raises(EffdlError):
        measure_latency(lambda _: None, None, repeats=0)


def test_torch_and_onnx_latency_record_their_threads(resnet20_onnx):
    model = create_model("resnet20", width=0.25).train()
    before = torch.get_num_threads()
    result = torch_latency(model, (2, 3, 32, 32), threads=1, warmup=1, repeats=3)
    assert (result.backend, result.batch_size, result.threads, result.repeats) == ("pytorch", 2, 1, 3)
    assert torch.get_num_threads() == before and model.training  # settings restored
    ort_result = onnx_latency(resnet20_onnx, batch_size=2, threads=1, warmup=1, repeats=3)
    assert (ort_result.backend, ort_result.batch_size, ort_result.threads) == ("onnxruntime", 2, 1)
    assert ort_result.median_ms > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_torch_latency_on_gpu_is_synchronised():
    result = torch_latency(create_model("resnet20", width=0.25), (8, 3, 32, 32), device="cuda", warmup=2, repeats=5)
    assert result.device.startswith("cuda") and result.median_ms > 0


def test_onnx_speedup_is_eager_over_onnx_median_per_batch():
    def timed(backend: str, batch: int, median: float, device: str = "cpu") -> LatencyResult:
        return LatencyResult(backend, device, batch, 1, 1, 0, median, median, 0.0, median, median, median, median,
                             [median])

    result = BenchResult((3, 32, 32), [timed("pytorch", 1, 4.0), timed("onnxruntime", 1, 2.0),
                                       timed("pytorch", 8, 30.0, device="cuda"), timed("onnxruntime", 8, 10.0),
                                       timed("pytorch", 8, 20.0)])
    assert result.onnx_speedups() == {1: 2.0, 8: 2.0}  # compared with the CPU eager time only
    assert result.latency("pytorch", 8).device == "cuda"
    assert result.latency("pytorch", 8, device="cpu").median_ms == 20.0
    assert not result.machine_busy  # load unknown
    result.load_average = 1000.0
    assert result.machine_busy


def test_cli_export_writes_a_verified_file(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out" / "tiny.onnx"
    assert main(["export", str(tiny_checkpoint), "--out", str(out), "--exporter", "torchscript", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["exporter"] == "torchscript"
    assert report["bytes"] == out.stat().st_size > 0
    assert report["max_abs_diff"] < 1e-4


def test_cli_bench_times_both_backends(tiny_checkpoint, tmp_path, capsys):
    argv = ["bench", str(tiny_checkpoint), "--batch-sizes", "1,2", "--repeats", "3", "--warmup", "1",
            "--threads", "1", "--device", "cpu", "--out", str(tmp_path / "keep"), "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    pairs = {(r["backend"], r["batch_size"]) for r in report["latency"]}
    assert pairs == {("pytorch", 1), ("pytorch", 2), ("onnxruntime", 1), ("onnxruntime", 2)}
    assert all(r["threads"] == 1 for r in report["latency"])
    assert report["onnx"]["max_abs_diff"] < 1e-4
    assert report["sizes"]["checkpoint_bytes"] == tiny_checkpoint.stat().st_size
    assert report["sizes"]["onnx_bytes"] == (tmp_path / "keep" / "model.onnx").stat().st_size
    assert set(report["onnx_speedup"]) == {"1", "2"}
    assert report["load_average"] >= 0


def test_cli_bench_without_onnx_prints_a_table(tiny_checkpoint, capsys):
    assert main(["bench", str(tiny_checkpoint), "--no-onnx", "--batch-sizes", "1", "--repeats", "2",
                 "--warmup", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "pytorch" in out and "onnxruntime" not in out and "checkpoint file" in out


def test_cli_bad_input_exits_2(tmp_path, tiny_checkpoint, capsys):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(tiny_checkpoint.read_bytes()[:100])
    assert main(["bench", str(tmp_path / "missing.safetensors"), "--no-onnx"]) == 2
    assert main(["export", str(corrupt), "--out", str(tmp_path / "x.onnx")]) == 2
    assert main(["bench", str(tiny_checkpoint), "--batch-sizes", "1,zero", "--no-onnx"]) == 2
    assert main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "x.onnx"), "--input-size", "3,32"]) == 2
    err = capsys.readouterr().err
    assert err.count("effdl: error:") == 4 and "Traceback" not in err


def test_cli_export_int8_calibrates_a_float_checkpoint_and_runs_every_conv_on_integers(tiny_checkpoint, tmp_path,
                                                                                       capsys):
    out = tmp_path / "tiny-int8.onnx"
    assert main(["export", str(tiny_checkpoint), "--out", str(out), "--int8", "--data", "synthetic",
                 "--calibration", "percentile", "--calibration-images", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["int8"] and report["bytes"] == out.stat().st_size
    assert (report["integer_convs"], report["float_convs"]) == (3, 0)  # tiny_cnn has three convs
    assert report["max_abs_diff"] < 1e-2
    weights = [t for t in onnx.load(str(out)).graph.initializer if t.name.endswith("weight_codes")]
    assert len(weights) == 4 and all(t.data_type == onnx.TensorProto.UINT8 for t in weights)  # U8U8: no saturation


def test_cli_export_of_a_fake_quant_checkpoint_and_int8_without_data(tiny_checkpoint, tmp_path, capsys):
    from effdl.compress.quantize import FakeQuantConfig, quantize_

    torch.manual_seed(0)
    model = quantize_(create_model("tiny_cnn"), FakeQuantConfig(weight_bits=3, act_bits=3, method="pact"))
    model(torch.randn(8, 3, 32, 32))  # PACT initialises its clipping levels on a first batch
    fake_quant = save_model(tmp_path / "pact3.safetensors", model.eval())
    assert main(["export", str(fake_quant), "--out", str(tmp_path / "pact3.onnx"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_abs_diff"] < 1e-4
    assert main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "x.onnx"), "--int8"]) == 2
    assert "pass --data" in capsys.readouterr().err
    # 3-bit PACT grids are subsets of int8's: exported as int8 QDQ with the model's own scales.
    assert main(["export", str(fake_quant), "--out", str(tmp_path / "y.onnx"), "--int8", "--json"]) == 0
    check = json.loads(capsys.readouterr().out)["check"]
    assert check["rule"] == "quantized" and check["agreement"] >= 0.95 and check["max_steps"] <= 8
    dorefa = quantize_(create_model("tiny_cnn"), FakeQuantConfig(weight_bits=3, act_bits=3, method="dorefa"))
    dorefa(torch.randn(8, 3, 32, 32))
    dorefa_path = save_model(tmp_path / "dorefa3.safetensors", dorefa.eval())
    assert main(["export", str(dorefa_path), "--out", str(tmp_path / "z.onnx"), "--int8"]) == 2
    assert "int8 export cannot express layer" in capsys.readouterr().err and not (tmp_path / "z.onnx").exists()


def test_cli_bench_int8_times_int8_next_to_fp32_onnx(tiny_checkpoint, capsys):
    argv = ["bench", str(tiny_checkpoint), "--int8", "--data", "synthetic", "--calibration-images", "64",
            "--batch-sizes", "1", "--repeats", "3", "--warmup", "1", "--threads", "1", "--device", "cpu"]
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {r["backend"] for r in report["latency"]} == {"pytorch", "onnxruntime", "onnxruntime-int8"}
    assert report["int8"]["max_abs_diff"] < 1e-2 and report["sizes"]["int8_onnx_bytes"] == report["int8"]["bytes"]
    int8_ms = next(r["median_ms"] for r in report["latency"] if r["backend"] == "onnxruntime-int8")
    fp32_ms = next(r["median_ms"] for r in report["latency"] if r["backend"] == "onnxruntime")
    assert report["int8"]["speedup_vs_fp32_onnx"]["1"] == pytest.approx(fp32_ms / int8_ms)
    assert main([*argv, "--no-onnx"]) == 0  # the table; int8 is timed even without the fp32 export
    out = capsys.readouterr().out
    assert "onnxruntime-int8" in out and "int8 ONNX Runtime output matches" in out and "int8 ONNX file" in out


def test_evaluate_onnx_counts_the_same_as_pytorch(tmp_path, synthetic):
    from effdl.data import BatchLoader
    from effdl.measure import evaluate, evaluate_onnx

    model = create_model("tiny_cnn").eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    loader = BatchLoader.for_split(synthetic, "test", batch_size=100)
    torch_acc, onnx_acc = evaluate(model, loader), evaluate_onnx(path, loader)
    assert (onnx_acc.correct, onnx_acc.total) == (torch_acc.correct, torch_acc.total) and onnx_acc.total == 256
    assert abs(onnx_acc.loss - torch_acc.loss) < 1e-4


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_export_carries_the_data_record_runs_at_any_batch_and_at_the_models_own_size(exporter, tmp_path):
    from effdl.deploy.onnx import export_verified, read_metadata

    model = create_model("tiny_cnn").eval()
    model.effdl_data = {"dataset": "imagefolder:/photos", "input_size": [3, 64, 48], "mean": [0.5, 0.4, 0.3],
                        "std": [0.2, 0.2, 0.2], "classes": [f"c{i}" for i in range(10)], "resize": "crop"}
    path, check = export_verified(model, tmp_path / "m.onnx", exporter=exporter)  # no input size: the model's
    assert check.rule == "float" and check.inputs == "random" and check.max_abs_diff < 1e-4
    meta = read_metadata(path)
    assert meta["input_size"] == [3, 64, 48] and meta["exporter"] == exporter
    assert {k: meta[k] for k in ("dataset", "mean", "std", "classes", "resize")} == {
        k: model.effdl_data[k] for k in ("dataset", "mean", "std", "classes", "resize")}
    session = ort_session(path)
    for batch in (1, 5):
        x = torch.randn(batch, 3, 64, 48)
        got = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_models_returning_dicts_and_tuples_are_compared_leaf_by_leaf(exporter, tmp_path):
    from effdl.deploy.onnx import export_verified, output_names

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head, self.aux = nn.Linear(4, 10), nn.Linear(4, 3)

        def forward(self, x):
            features = self.body(x)
            return {"logits": self.head(features), "extra": (self.aux(features), features)}

    model = TwoHeads().eval()
    with torch.no_grad():
        assert output_names(model(torch.randn(1, 3, 32, 32))) == ["logits", "extra_0", "extra_1"]
    path, check = export_verified(model, tmp_path / "heads.onnx", exporter=exporter)
    session = ort_session(path)
    assert [o.name for o in session.get_outputs()] == ["logits", "extra_0", "extra_1"] and check.max_abs_diff < 1e-4
    assert [o.shape[1] for o in session.get_outputs()] == [10, 3, 4]
    with torch.no_grad():
        model.aux.weight.add_(0.1)  # the second output no longer matches: caught although the first does
    with pytest.raises(EffdlError, match="differs from PyTorch"):
        check_onnx(model, path)


def test_quantized_models_are_judged_on_agreement_and_grid_steps_and_say_when_inputs_were_random(tmp_path):
    from effdl.compress.quantize import Int8StaticConfig, calibrate, quantize_
    from effdl.deploy.onnx import MAX_STEPS, verify_onnx

    torch.manual_seed(0)
    model = quantize_(create_model("tiny_cnn").eval(), Int8StaticConfig())
    calibrate(model, torch.randn(64, 3, 32, 32))
    path = export_onnx(model, tmp_path / "fq.onnx", exporter="torchscript")
    check = verify_onnx(model, path)
    assert check.rule == "quantized" and check.inputs == "random" and "random inputs" in check.note
    assert check.agreement >= 0.95 and check.max_steps <= MAX_STEPS
    assert check.step == pytest.approx(check.max_abs_diff / check.max_steps) if check.max_steps else True
    with_images = verify_onnx(model, path, torch.randn(32, 3, 32, 32))
    assert with_images.inputs == "images" and with_images.count == 32 and not with_images.note
    with torch.no_grad():
        model.fc.bias.add_(torch.linspace(-3, 3, 10))  # predictions move: the file no longer matches
    with pytest.raises(EffdlError, match="ONNX Runtime disagrees with PyTorch: top-1 agreement"):
        verify_onnx(model, path, torch.randn(32, 3, 32, 32))


def test_cli_export_and_bench_default_to_the_models_input_size(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model("tiny_cnn")
    model.effdl_data = {"dataset": "synthetic", "input_size": [3, 64, 64], "mean": [0.5] * 3, "std": [0.25] * 3,
                        "classes": [str(i) for i in range(10)], "resize": None}
    checkpoint = save_model(tmp_path / "big.safetensors", model)
    out = tmp_path / "big.onnx"
    assert main(["export", str(checkpoint), "--out", str(out), "--exporter", "torchscript", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input_size"] == [3, 64, 64] and report["check"]["rule"] == "float"
    assert main(["export", str(checkpoint), "--out", str(out), "--exporter", "torchscript", "--input-size", "3,40,40",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input_size"] == [3, 40, 40]  # the override
    assert main(["bench", str(checkpoint), "--batch-sizes", "1", "--repeats", "2", "--warmup", "0", "--threads", "1",
                 "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input_shape"] == [3, 64, 64]


def test_a_4_bit_model_is_allowed_its_coarser_grid_but_a_shift_of_every_output_is_caught(tmp_path):
    """A k-bit activation grid's rounding flips move outputs 2**(8-k) times further than int8's, so
    the largest-error bound scales with it; a systematic error moves most outputs and fails the
    median bound, whatever the bit-width, even when every prediction still agrees."""
    from effdl.compress.quantize import FakeQuantConfig, calibrate, quantize_
    from effdl.deploy.int8 import export_int8_onnx
    from effdl.deploy.onnx import MAX_STEPS, MEDIAN_STEPS, step_limit, verify_onnx

    torch.manual_seed(0)
    model = quantize_(create_model("tiny_cnn").eval(), FakeQuantConfig(weight_bits=4, act_bits=4, first_last_bits=8))
    images = torch.randn(64, 3, 32, 32)
    calibrate(model, images)
    assert step_limit(model) == MAX_STEPS * 16 and step_limit(create_model("tiny_cnn")) == MAX_STEPS
    path = export_int8_onnx(model, tmp_path / "q4.onnx", verify=False)
    check = verify_onnx(model, path, images)
    assert check.limit_steps == MAX_STEPS * 16 and check.median_steps <= MEDIAN_STEPS
    with torch.no_grad():
        model.fc.bias.add_(4 * check.step)  # every logit moves 4 steps; the ranking does not change
    with pytest.raises(EffdlError, match="median"):
        verify_onnx(model, path, images)
