"""A report over runs: measure every run, mark each dataset's Pareto front, write table, CSV, JSON, PNG.

Runs on different datasets are never compared: each dataset gets its own Pareto front, its own
threshold (its track's; none for a dataset no track is about) and its own panel of the plot.
Runs whose accuracy was measured on a subset of the test split, or with flip TTA (two passes per
image, scored as one), are shown, marked, but never put on the front: their accuracy is not
comparable with full-split single-pass figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effdl.measure.scoring import get_track
from effdl.report.pareto import pareto_front
from effdl.report.plot import Panel, plot_panels
from effdl.report.runs import find_runs
from effdl.report.table import check_track, choose_scorers, choose_track, measure_run, write_csv, write_json


@dataclass
class Report:
    rows: list[dict[str, Any]]  # grouped by dataset, then by increasing plotted score
    scorers: list[str]
    plotted_scorer: str
    threshold: float | None  # the first dataset's (see thresholds)
    files: dict[str, Path] = field(default_factory=dict)
    thresholds: dict[str, float | None] = field(default_factory=dict)  # dataset -> plotted accuracy threshold


def make_report(
    run_paths: Sequence[str | Path],
    out_dir: str | Path = "reports",
    *,
    scorers: Sequence[str] | None = None,
    track: str | None = None,
    threshold: float | None = None,
    latency: bool = False,
    latency_threads: int | None = 1,
    input_size: Sequence[int] | None = None,
    latency_backend: str = "pytorch",
) -> Report:
    """Measure the runs in `run_paths` and write runs.csv, runs.json and accuracy_vs_score.png.

    Scores use each scorer's track named `track`, else the one named after the run's dataset.
    The plot uses the first scorer, one panel per dataset; each panel's threshold line is
    `threshold` (a fraction), by default the accuracy threshold of that scorer's track for the
    dataset (no line when the dataset has no track). A row's "pareto" is True when it was measured
    on the full test split and no such run of the same dataset dominates it. Counts use
    `input_size` (C, H, W) when given, else each run's model's own input size. `latency_backend`:
    "pytorch" (eager) or "onnx" (ONNX Runtime, as the model deploys; see effdl.deploy.bench.onnx_deploy_latency).
    """
    runs = find_runs(list(run_paths))
    chosen = choose_scorers(runs, scorers)
    check_track(chosen, track)
    plotted = chosen[0]
    measured = [measure_run(run, chosen, track, input_size, latency, latency_threads, latency_backend) for run in runs]
    datasets = list(dict.fromkeys(row["dataset"] for row in measured))  # in the order the runs were given
    rows: list[dict[str, Any]] = []
    panels: list[Panel] = []
    thresholds: dict[str, float | None] = {}
    for dataset in datasets:
        group = sorted((row for row in measured if row["dataset"] == dataset), key=lambda row: row[f"{plotted}_score"])
        scores = [row[f"{plotted}_score"] for row in group]
        accuracies = [row["accuracy"] for row in group]
        # comparable: the full split, one pass per image (flip TTA runs the model twice: its MACs and
        # score count one pass, so its accuracy would buy a place on the front at half price)
        full_split = [row.get("evaluated_on", "test") == "test" and not row.get("tta") for row in group]
        front = set(pareto_front([(s, a) if full else (s, float("nan"))
                                  for s, a, full in zip(scores, accuracies, full_split)]))
        for i, row in enumerate(group):
            row["pareto"] = i in front
        own_track = choose_track(plotted, track, dataset)
        thresholds[dataset] = (
            threshold if threshold is not None
            else float(get_track(plotted, own_track).threshold) if own_track is not None else None
        )
        panels.append(Panel(scores, accuracies, [row["name"] for row in group], thresholds[dataset],
                            score_label=f"{plotted} score ({group[0][f'{plotted}_track']})",
                            title=f"{dataset}: accuracy against {plotted} score", full_split=full_split))
        rows.extend(group)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    first = thresholds[datasets[0]]
    files = {
        "csv": write_csv(rows, out_dir / "runs.csv"),
        "json": write_json(rows, out_dir / "runs.json", scorers=chosen, plotted_scorer=plotted, threshold=first,
                           thresholds=thresholds),
        "png": plot_panels(panels, out_dir / "accuracy_vs_score.png"),
    }
    return Report(rows, chosen, plotted, first, files, thresholds)
