"""A report over training runs: measure every run, mark the Pareto front, write table, CSV, JSON, PNG."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effdl.measure.scoring import get_track
from effdl.report.pareto import pareto_front
from effdl.report.plot import plot_accuracy_vs_score
from effdl.report.runs import find_runs
from effdl.report.table import check_track, choose_scorers, choose_track, measure_run, write_csv, write_json


@dataclass
class Report:
    rows: list[dict[str, Any]]
    scorers: list[str]
    plotted_scorer: str
    threshold: float
    files: dict[str, Path] = field(default_factory=dict)


def make_report(
    run_paths: Sequence[str | Path],
    out_dir: str | Path = "reports",
    *,
    scorers: Sequence[str] | None = None,
    track: str | None = None,
    threshold: float | None = None,
    latency: bool = False,
    latency_threads: int | None = 1,
    input_size: Sequence[int] = (3, 32, 32),
) -> Report:
    """Measure the runs in `run_paths` and write runs.csv, runs.json and accuracy_vs_score.png.

    Scores use each scorer's track named `track`, else the one named after the run's dataset.
    The plot uses the first scorer; its threshold line is `threshold` (a fraction), by default
    the accuracy threshold of that scorer's track for the first run.
    """
    runs = find_runs(list(run_paths))
    chosen = choose_scorers(runs, scorers)
    check_track(chosen, track)
    plotted = chosen[0]
    rows = sorted((measure_run(run, chosen, track, input_size, latency, latency_threads) for run in runs),
                  key=lambda row: row[f"{plotted}_score"])
    if threshold is None:
        threshold = float(get_track(plotted, choose_track(plotted, track, runs[0].summary.dataset)).threshold)
    scores = [row[f"{plotted}_score"] for row in rows]
    accuracies = [row["accuracy"] for row in rows]
    for i in pareto_front(list(zip(scores, accuracies))):
        rows[i]["pareto"] = True
    for row in rows:
        row.setdefault("pareto", False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "csv": write_csv(rows, out_dir / "runs.csv"),
        "json": write_json(rows, out_dir / "runs.json", scorers=chosen, plotted_scorer=plotted, threshold=threshold),
        "png": plot_accuracy_vs_score(
            scores, accuracies, out_dir / "accuracy_vs_score.png", labels=[row["name"] for row in rows],
            threshold=threshold, score_label=f"{plotted} score ({rows[0][f'{plotted}_track']})",
        ),
    }
    return Report(rows, chosen, plotted, threshold, files)
