"""Reports over run directories: loading, Pareto front, plot, CSV/JSON, and `effdl report`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from effdl.checkpoint import save_model
from effdl.cli import main
from effdl.errors import EffdlError
from effdl.measure import profile, score
from effdl.models import create_model
from effdl.report import find_runs, load_run, make_report, pareto_front, plot_accuracy_vs_score


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(root: Path, name: str, width: float, correct: int, total: int = 10_000,
             dataset: str = "cifar10") -> Path:
    """A run directory as the trainer writes it, with a real tiny model and a hand-written summary."""
    run = root / name
    run.mkdir(parents=True)
    torch.manual_seed(0)
    model = create_model("resnet20", width=width)
    save_model(run / "best.safetensors", model)
    save_model(run / "last.safetensors", model)
    summary = {"name": name, "accuracy": correct / total, "correct": correct, "total": total,
               "dataset": dataset, "model": {"name": "resnet20", "kwargs": {"width": width}},
               "time_s": 1.0, "images_per_s": 100.0, "epochs": 1}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.yaml").write_text("model: resnet20\n")
    (run / "metrics.jsonl").write_text("")
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Three runs: small and inaccurate, medium and accurate, large and barely more accurate."""
    root = tmp_path_factory.mktemp("runs")
    make_run(root, "small", 0.25, correct=8_500)
    make_run(root, "medium", 0.5, correct=9_100)
    make_run(root, "large", 0.75, correct=9_000)  # dominated by medium: bigger and less accurate
    return root


def test_pareto_front_on_hand_made_points():
    points = [(1.0, 0.90), (0.5, 0.92), (2.0, 0.95), (0.3, 0.70), (0.5, 0.80), (2.5, 0.95)]
    # (1.0, 0.90) and (0.5, 0.80) are dominated by (0.5, 0.92); (2.5, 0.95) by (2.0, 0.95).
    assert pareto_front(points) == [3, 1, 2]
    assert pareto_front([(1.0, 0.9), (1.0, 0.9)]) == [0, 1]  # ties dominate nothing
    assert pareto_front([(float("nan"), 0.9), (2.0, 0.5)]) == [1]
    assert pareto_front([]) == []


def test_plot_writes_a_png(tmp_path):
    path = plot_accuracy_vs_score([0.1, 1.0, 10.0], [0.85, 0.9, 0.95], tmp_path / "sub" / "plot.png",
                                  labels=["a", "b", "c"], threshold=0.9, score_label="imt2024")
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5_000


def test_report_over_fabricated_runs(runs, tmp_path):
    report = make_report([runs], tmp_path / "out", scorers=["imt2024", "micronet"], track="cifar100",
                         latency=True)
    by_name = {row["name"]: row for row in report.rows}
    assert set(by_name) == {"small", "medium", "large"}
    assert report.plotted_scorer == "imt2024"
    # imt2024 has no cifar100 track: it falls back to the runs' dataset, cifar10 (threshold 90%).
    assert report.threshold == pytest.approx(0.9)
    assert {row["imt2024_track"] for row in report.rows} == {"cifar10"}
    assert {row["micronet_track"] for row in report.rows} == {"cifar100"}
    # The table holds what the counting engine and the scorers say about each checkpoint.
    model = create_model("resnet20", width=0.5)
    prof = profile(model, (1, 3, 32, 32))
    assert (by_name["medium"]["params"], by_name["medium"]["macs"]) == (prof.params, prof.macs)
    assert by_name["medium"]["imt2024_score"] == pytest.approx(score(model, "imt2024", "cifar10").score)
    assert by_name["small"]["imt2024_score"] < by_name["medium"]["imt2024_score"] < by_name["large"]["imt2024_score"]
    # Exact threshold check: 9,000 of 10,000 meets 90%, 8,500 does not; every micronet entry is >= 80%.
    assert [by_name[n]["imt2024_qualifies"] for n in ("small", "medium", "large")] == [False, True, True]
    assert all(row["micronet_qualifies"] for row in report.rows)
    assert {n for n, row in by_name.items() if row["pareto"]} == {"small", "medium"}
    assert all(row["latency_ms"] > 0 and row["latency_threads"] == 1 for row in report.rows)

    assert report.files["png"].read_bytes()[:8] == PNG_MAGIC
    with open(report.files["csv"]) as f:
        table = list(csv.DictReader(f))
    assert {r["name"] for r in table} == set(by_name)
    assert {r["name"]: r["pareto"] for r in table}["large"] == "False"
    saved = json.loads(report.files["json"].read_text())
    assert saved["plotted_scorer"] == "imt2024" and len(saved["runs"]) == 3


def test_default_scorers_follow_the_dataset(runs, tmp_path):
    report = make_report([runs / "small", runs / "medium"], tmp_path, threshold=0.88)
    assert report.scorers == ["imt2021", "imt2024"]  # the scorers with a cifar10 track
    assert report.threshold == 0.88


def test_bad_runs_give_clear_errors(runs, tmp_path):
    with pytest.raises(EffdlError, match="run directory not found"):
        load_run(tmp_path / "nope")
    not_finished = tmp_path / "unfinished"
    not_finished.mkdir()
    with pytest.raises(EffdlError, match="no summary.json"):
        find_runs([not_finished])
    bad_summary = make_run(tmp_path, "bad", 0.25, correct=1)
    (bad_summary / "summary.json").write_text(json.dumps({"name": "bad", "accuracy": 1.5}))
    with pytest.raises(EffdlError, match="accuracy"):
        load_run(bad_summary)
    summary = json.loads((runs / "small" / "summary.json").read_text())
    (bad_summary / "summary.json").write_text(json.dumps({**summary, "correct": 9_999}))
    with pytest.raises(EffdlError, match="not correct/total"):
        load_run(bad_summary)
    with pytest.raises(EffdlError, match="unknown scorer"):
        make_report([runs / "small"], tmp_path, scorers=["imt2042"])
    with pytest.raises(EffdlError, match="unknown track"):
        make_report([runs / "small"], tmp_path, scorers=["imt2024"], track="mnist")


def test_cli_report_end_to_end(runs, tmp_path, capsys):
    out = tmp_path / "reports"
    assert main(["report", str(runs / "small"), str(runs / "medium"), "--out", str(out),
                 "--scorer", "imt2024", "--threshold", "0.9"]) == 0
    printed = capsys.readouterr().out
    assert "small" in printed and "medium" in printed and "imt2024" in printed
    assert sorted(p.name for p in out.iterdir()) == ["accuracy_vs_score.png", "runs.csv", "runs.json"]


def test_cli_report_bad_input_exits_2(runs, tmp_path, capsys):
    corrupt = make_run(tmp_path, "corrupt", 0.25, correct=9_000)
    (corrupt / "best.safetensors").write_bytes(b"\x00" * 64)
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert main(["report", str(corrupt), "--out", str(tmp_path / "o")]) == 2
    assert main(["report", str(runs / "small"), "--threshold", "90", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("effdl: error:") == 3 and "Traceback" not in err
    assert "corrupt" in err


def test_report_reads_every_run_kind_as_its_writer_writes_it(tmp_path, capsys):
    """A trained run, then a prune and a quantize run written by the real commands, in one report."""
    from effdl.data.datasets import synthetic_dataset

    root = tmp_path / "runs"
    run = make_run(root, "base", 0.25, correct=200, total=256, dataset="synthetic")
    model = create_model("resnet20", width=0.25)
    model.effdl_data = synthetic_dataset().data_meta()
    save_model(run / "best.safetensors", model, config={"dataset": "synthetic"})
    ckpt = str(run / "best.safetensors")
    assert main(["quantize", ckpt, "--method", "ptq-fp16", "--out", str(root / "q"), "--device", "cpu"]) == 0
    assert main(["prune", ckpt, "--method", "magnitude", "--sparsity", "0.5", "--out", str(root / "p"),
                 "--device", "cpu"]) == 0
    legacy = json.loads((root / "q" / "summary.json").read_text())  # as quantize wrote it before the core fields
    for key in ("name", "kind", "model", "checkpoint", "evaluated_on"):
        legacy.pop(key)
    (root / "old-q").mkdir()
    (root / "old-q" / "best.safetensors").write_bytes((root / "q" / "best.safetensors").read_bytes())
    (root / "old-q" / "summary.json").write_text(json.dumps(legacy))
    capsys.readouterr()
    assert main(["report", str(root), "--out", str(tmp_path / "rep"), "--scorer", "imt2024"]) == 0
    rows = {row["name"]: row for row in json.loads((tmp_path / "rep" / "runs.json").read_text())["runs"]}
    assert {name: row["kind"] for name, row in rows.items()} == {"base": "train", "q": "quantize", "p": "prune",
                                                                 "old-q": "quantize"}
    assert all(row["model"] == "resnet20" and row["evaluated_on"] == "test" for row in rows.values())


def test_existing_runs_are_never_replaced_without_overwrite(tmp_path, capsys):
    run = make_run(tmp_path, "base", 0.25, correct=9_000)
    ckpt = str(run / "best.safetensors")
    quantized = tmp_path / "q"
    args = ["quantize", ckpt, "--method", "ptq-fp16", "--data", "synthetic", "--device", "cpu", "--out", str(quantized)]
    assert main(args) == 0
    before = (quantized / "summary.json").read_text()
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (quantized / "summary.json").read_text() == before
    prune = ["prune", ckpt, "--method", "magnitude", "--sparsity", "0.5", "--data", "synthetic", "--device", "cpu",
             "--out", str(quantized)]
    assert main(prune) == 2 and (quantized / "summary.json").read_text() == before
    assert main([*prune, "--overwrite"]) == 0
    assert json.loads((quantized / "summary.json").read_text())["kind"] == "prune"
    # --overwrite never deletes the run it reads from
    assert main(["quantize", ckpt, "--method", "ptq-fp16", "--data", "synthetic", "--device", "cpu",
                 "--out", str(run), "--overwrite"]) == 2
    assert (run / "best.safetensors").is_file()


def test_runs_on_different_datasets_get_their_own_front(tmp_path):
    make_run(tmp_path, "c10-small", 0.25, correct=8_000)
    make_run(tmp_path, "c10-large", 0.5, correct=9_000)
    make_run(tmp_path, "c100-small", 0.25, correct=6_000, dataset="cifar100")
    make_run(tmp_path, "c100-large", 0.75, correct=5_000, dataset="cifar100")  # dominated within cifar100
    report = make_report([tmp_path], tmp_path / "out", scorers=["micronet"])
    pareto = {row["name"]: row["pareto"] for row in report.rows}
    # One front over all four would drop every cifar100 run (lower accuracy); per dataset, each has a front.
    assert pareto == {"c10-small": True, "c10-large": True, "c100-small": True, "c100-large": False}
    assert [row["dataset"] for row in report.rows] == ["cifar10", "cifar10", "cifar100", "cifar100"]
    # micronet has a cifar100 track, not a cifar10 one: no threshold is drawn for cifar10 (its
    # cifar100 threshold would mean nothing there).
    assert report.thresholds == {"cifar10": None, "cifar100": pytest.approx(0.8)}
    assert report.files["png"].read_bytes()[:8] == PNG_MAGIC


def test_runs_measured_on_a_test_subset_or_with_tta_are_never_on_the_front(tmp_path):
    make_run(tmp_path, "full", 0.5, correct=9_000)
    subset = make_run(tmp_path, "subset", 0.5, correct=950, total=1_000)  # "beats" full on 1,000 images
    summary = json.loads((subset / "summary.json").read_text())
    (subset / "summary.json").write_text(json.dumps({**summary, "evaluated_on": "test (balanced subset of 1000)"}))
    tta = make_run(tmp_path, "tta", 0.5, correct=9_500)  # two passes per image, scored as one
    summary = json.loads((tta / "summary.json").read_text())
    (tta / "summary.json").write_text(json.dumps({**summary, "tta": True}))
    report = make_report([tmp_path], tmp_path / "out", scorers=["imt2024"])
    assert {row["name"]: row["pareto"] for row in report.rows} == {"full": True, "subset": False, "tta": False}
    assert report.thresholds == {"cifar10": pytest.approx(0.9)}


def test_counts_use_each_models_own_input_size(tmp_path):
    run = make_run(tmp_path, "small-images", 0.25, correct=9_000)
    model = create_model("resnet20", width=0.25)
    model.effdl_data = {"dataset": "cifar10", "input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.25] * 3,
                        "classes": None, "resize": None}
    save_model(run / "best.safetensors", model)
    row = make_report([run], tmp_path / "out", scorers=["imt2024"]).rows[0]
    assert row["input_size"] == [3, 16, 16] and row["macs"] == profile(model, (1, 3, 16, 16)).macs
    assert make_report([run], tmp_path / "o2", scorers=["imt2024"], input_size=(3, 32, 32)).rows[0]["macs"] > row["macs"]


def test_labels_of_nearby_runs_do_not_overlap(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from effdl.report.plot import place_labels, text_extent

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    xs, ys = [1.0, 1.01, 1.02, 1.03, 2.0], [90.0, 90.05, 90.1, 89.95, 95.0]
    ax.scatter(xs, ys)
    annotations = place_labels(ax, xs, ys, [f"resnet20-cifar10-run{i}" for i in range(5)])
    renderer = fig.canvas.get_renderer()
    boxes = [text_extent(a, renderer) for a in annotations]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_report_of_a_recipe_folder_leaves_out_the_stages_it_replaced(runs, tmp_path, capsys):
    import shutil

    recipe = tmp_path / "recipe"
    shutil.copytree(runs / "small", recipe / "01-prune")
    shutil.copytree(runs / "medium", recipe / "01-prune.replaced-0123abcd")
    assert [run.path.name for run in find_runs([recipe])] == ["01-prune"]
    assert "left out 1 replaced recipe stage(s)" in capsys.readouterr().err
    assert [run.path.name for run in find_runs([recipe / "01-prune.replaced-0123abcd"])] == ["01-prune.replaced-0123abcd"]
    assert [run.path.name for run in find_runs(sorted(recipe.iterdir()))] == ["01-prune"]  # a shell glob
    capsys.readouterr()
    (tmp_path / "interrupted").mkdir()  # after a folder with replaced stages, still reported as unfinished
    assert [run.path.name for run in find_runs([recipe, tmp_path / "interrupted"])] == ["01-prune"]
    assert "skipped 1 unfinished run(s)" in capsys.readouterr().err
    shutil.rmtree(recipe / "01-prune")  # the re-run of the stage failed: only the replaced one is finished
    with pytest.raises(EffdlError, match="only recipe stages a re-run replaced"):
        find_runs([recipe])


def test_report_of_a_shell_glob_skips_unfinished_runs(runs, tmp_path, capsys):
    """`effdl report runs/*` while a run is in progress or was interrupted (no summary.json yet)."""
    unfinished = tmp_path / "interrupted"
    unfinished.mkdir()
    found = find_runs([runs / "small", unfinished, runs / "medium"])
    assert [run.path.name for run in found] == ["small", "medium"]
    assert "skipped 1 unfinished run(s)" in capsys.readouterr().err
    (tmp_path / "another").mkdir()
    with pytest.raises(EffdlError, match="no summary.json"):  # nothing finished: the error, as for one run
        find_runs([unfinished, tmp_path / "another"])


def test_an_accuracy_cell_says_where_and_how_it_was_measured():
    from effdl.measure.accuracy import evaluated_on
    from effdl.pipelines.score import ScoreReport
    from effdl.report.table import accuracy_cell

    assert accuracy_cell({"accuracy": 0.5}) == "50.00%"
    assert accuracy_cell({"accuracy": 0.5, "evaluated_on": evaluated_on(256, 256), "tta": True}) == \
        "50.00% (test (balanced subset of 256)) (flip TTA)"
    assert evaluated_on(0, 10_000) == evaluated_on(None, 10_000) == "test"  # a limit of 0 is none
    report = ScoreReport("m", None, [], evaluated_on=evaluated_on(256, 256), tta=True)
    assert report.accuracy_where == "test (balanced subset of 256), flip TTA"
    assert ScoreReport("m", None, []).accuracy_where == "test split"
