"""The README's main job, `effdl demo`, on the real CIFAR-10 copy (1 epoch on a small subset)."""

import json

from effdl.cli import main


def test_demo_trains_scores_exports_and_checks_int8(cifar10_root, tmp_path, capsys):
    code = main(["demo", "--epochs", "1", "--subset", "512", "--data-root", str(cifar10_root),
                 "--out-dir", str(tmp_path), "--name", "d"])
    assert code == 0
    run = tmp_path / "d"
    summary = json.loads((run / "demo.json").read_text())
    assert summary["total"] == 10_000  # accuracy is measured on the full test split
    assert summary["profile"]["params"] == 272_474 and summary["profile"]["macs"] > 40_000_000
    assert 0 < summary["scores"]["imt2024"] < 1
    assert summary["bench"]["onnx"]["max_abs_diff"] < 1e-4
    int8 = summary["int8"]
    assert abs(int8["onnx_accuracy"] - int8["accuracy"]) <= 0.003  # int8 export keeps the accuracy
    assert int8["imt2024"] < summary["scores"]["imt2024"] / 3  # 8-bit weights and activations
    assert (run / "02-export" / "model.onnx").is_file() and (run / "04-export" / "model-int8.onnx").is_file()
    assert (run / "report" / "accuracy_vs_score.png").is_file()


def test_demo_never_deletes_a_run_it_did_not_create(tmp_path, capsys):
    from effdl.cli.demo import fresh_name

    old = tmp_path / "demo"
    old.mkdir()
    (old / "summary.json").write_text("{}")
    assert fresh_name(tmp_path) == "demo-2"  # the default name moves on
    (tmp_path / "demo-2").mkdir()  # an empty folder holds no run: it may be used
    assert fresh_name(tmp_path) == "demo-2"
    code = main(["demo", "--out-dir", str(tmp_path), "--name", "demo"])  # named: refused, not replaced
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (old / "summary.json").read_text() == "{}"
