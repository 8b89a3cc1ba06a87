"""Lineage: every checkpoint records the stages that made it, and `effdl info` shows them."""

import json

import pytest

from effdl.checkpoint import config_hash, read_checkpoint_meta, save_model
from effdl.cli import main
from effdl.models import create_model
from effdl.pipelines.prune import PruneOptions, prune_checkpoint
from effdl.pipelines.quantize import QuantizeOptions, quantize_run

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_prune_quantize_records_three_stages_in_order(tmp_path, capsys):
    assert main(["train", "--data", "synthetic", "--model", "tiny_cnn", "--epochs", "1", "--batch-size", "64",
                 "--out-dir", str(tmp_path), "--name", "base", "--progress", "false"]) == 0
    trained = tmp_path / "base" / "best.safetensors"
    summary = json.loads((tmp_path / "base" / "summary.json").read_text())
    (train,) = read_checkpoint_meta(trained)["lineage"]
    assert train["stage"] == "train" and train["run"] == "base" and train["dataset"] == "synthetic"
    assert train["model"] == "tiny_cnn" and train["epochs"] == 1
    assert train["accuracy"] == summary["accuracy"]  # the test accuracy, filled in once measured
    assert train["config_hash"] == config_hash(read_checkpoint_meta(trained)["config"])
    assert train["date"].endswith("+00:00")
    assert read_checkpoint_meta(tmp_path / "base" / "last.safetensors")["lineage"][0]["run"] == "base"

    pruned = prune_checkpoint(trained, PruneOptions(method="magnitude", sparsity=0.5, device="cpu"), tmp_path / "p")
    quantized = quantize_run(tmp_path / "p" / "best.safetensors",
                             QuantizeOptions(method="ptq-int8", calibration_images=64, device="cpu"), tmp_path / "q")
    final = tmp_path / "q" / "best.safetensors"
    lineage = read_checkpoint_meta(final)["lineage"]
    assert [entry["stage"] for entry in lineage] == ["train", "prune", "quantize"]
    assert lineage[0] == train  # copied unchanged
    assert lineage[1]["source"] == str(trained) and lineage[1]["method"] == "magnitude"
    assert lineage[2]["source"] == str(tmp_path / "p" / "best.safetensors") and lineage[2]["method"] == "ptq-int8"
    assert [lineage[1]["accuracy"], lineage[2]["accuracy"]] == [pruned["accuracy"], quantized["accuracy"]]
    assert [lineage[1]["run"], lineage[2]["run"]] == ["p", "q"]
    assert lineage[1]["config_hash"] != lineage[2]["config_hash"]

    capsys.readouterr()  # what train printed
    assert main(["info", str(final)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["lineage"] == lineage
    lines = [line.strip() for line in err.splitlines() if line.strip()[:2] in ("1.", "2.", "3.")]
    assert len(lines) == 3
    assert lines[0].startswith("1. train") and "run base" in lines[0]
    assert lines[1].startswith("2. prune magnitude") and "run p" in lines[1]
    assert lines[2].startswith("3. quantize ptq-int8") and f"accuracy {quantized['accuracy']:.4f}" in lines[2]
    assert main(["info", str(final), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["lineage"] == lineage and "lineage" not in err


def test_a_checkpoint_without_lineage_starts_with_an_unknown_stage(tmp_path, capsys):
    legacy = save_model(tmp_path / "legacy.safetensors", create_model("tiny_cnn"), config={"dataset": "synthetic"})
    assert "lineage" not in read_checkpoint_meta(legacy)
    assert main(["info", str(legacy)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["lineage"] == [] and "none recorded" in err

    quantize_run(legacy, QuantizeOptions(method="ptq-fp16", device="cpu"), tmp_path / "q")
    unknown, entry = read_checkpoint_meta(tmp_path / "q" / "best.safetensors")["lineage"]
    assert unknown == {"stage": "unknown", "source": str(legacy)}
    assert entry["stage"] == "quantize" and entry["source"] == str(legacy)


def test_a_distillation_line_says_it_trained_a_new_student_taught_by_the_model_above():
    from effdl.cli.info import lineage_lines

    lines = lineage_lines([{"stage": "train", "run": "t20", "accuracy": 0.5},
                           {"stage": "distill", "method": "kd", "run": "d", "model": "resnet20", "accuracy": 0.6,
                            "teachers": ["runs/t20/best.safetensors"]}])
    assert lines == ["1. train  run t20  accuracy 0.5000",
                     "2. distill kd  run d (a new resnet20 taught by runs/t20/best.safetensors)  accuracy 0.6000"]
