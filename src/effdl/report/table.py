"""Measure each run (complexity, scores, optional latency) into flat rows; write them as CSV/JSON/rich."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from effdl.checkpoint import load_model
from effdl.errors import unknown_name_error
from effdl.measure.counting import profile
from effdl.measure.latency import torch_latency
from effdl.measure.scoring import score, scorer_names, track_names
from effdl.models.registry import model_input_size
from effdl.report.runs import Run


def choose_scorers(runs: Sequence[Run], scorers: Sequence[str] | None) -> list[str]:
    """The scorers asked for, else those with a track named after a run's dataset, else all."""
    known = scorer_names()
    if scorers:
        for name in scorers:
            if name not in known:
                raise unknown_name_error("scorer", name, known)
        return list(dict.fromkeys(scorers))
    datasets = {run.summary.dataset for run in runs}
    matching = [name for name in known if datasets & set(track_names(name))]
    return matching or known


def choose_track(scorer: str, track: str | None, dataset: str) -> str | None:
    """`track` if `scorer` has it, else the track named after the run's dataset, else the default."""
    tracks = track_names(scorer)
    if track in tracks:
        return track
    return dataset if dataset in tracks else None


def check_track(scorers: Sequence[str], track: str | None) -> None:
    """An explicit track must belong to at least one of the scorers."""
    if track is not None and not any(track in track_names(s) for s in scorers):
        raise unknown_name_error(f"track of scorers {', '.join(scorers)}", track,
                                 {t for s in scorers for t in track_names(s)})


def measure_run(
    run: Run,
    scorers: Sequence[str],
    track: str | None = None,
    input_size: Sequence[int] | None = None,
    latency: bool = False,
    latency_threads: int | None = 1,
    latency_backend: str = "pytorch",
) -> dict[str, Any]:
    """One flat row: the run's summary, its counted complexity, each score and whether it qualifies.

    Counts and latency are measured on one input of `input_size` (C, H, W), by default the size
    the run's model was trained for (`model_input_size`).

    With `latency`, the median batch-1 CPU latency with `latency_threads` threads (one by
    default: on a busy machine multi-threaded timings mostly measure the scheduler), in PyTorch
    eager (`latency_backend` "pytorch") or in ONNX Runtime as the model deploys ("onnx", see
    `effdl.deploy.bench.onnx_deploy_latency`; the row's "latency_graph" says which graph was timed).
    """
    s = run.summary
    model, _ = load_model(run.checkpoint)
    input_size = tuple(input_size) if input_size is not None else model_input_size(model)
    prof = profile(model, (1, *input_size))
    row: dict[str, Any] = {
        "name": s.name, "kind": s.kind, "model": s.model.name, "dataset": s.dataset, "accuracy": s.accuracy,
        "correct": s.correct, "total": s.total, "evaluated_on": s.evaluated_on, "selected_on": s.selected_on,
        "tta": s.tta,
        "input_size": list(input_size), "params": prof.params, "macs": prof.macs,
        "size_bytes": prof.size_bytes, "peak_activation_bytes": prof.peak_activation_bytes,
        "train_time_s": s.time_s, "path": str(run.path),
    }
    for name in scorers:
        result = score(prof, name, choose_track(name, track, s.dataset))
        row[f"{name}_score"] = result.score
        row[f"{name}_track"] = result.track
        row[f"{name}_threshold"] = float(result.threshold)
        row[f"{name}_qualifies"] = result.qualifies(s.correct, s.total)
    if latency and latency_backend == "onnx":
        from effdl.deploy.bench import onnx_deploy_latency

        row["latency_ms"], row["latency_graph"], row["latency_threads"] = onnx_deploy_latency(
            model, input_size, latency_threads)
    elif latency:
        timed = torch_latency(model, (1, *input_size), threads=latency_threads, warmup=3, repeats=20,
                              max_seconds=5.0)
        row["latency_ms"] = timed.median_ms
        row["latency_threads"] = timed.threads
    return row


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_json(rows: Sequence[dict[str, Any]], path: str | Path, **extra: Any) -> Path:
    path = Path(path)
    path.write_text(json.dumps({**extra, "runs": list(rows)}, indent=2))
    return path


def accuracy_cell(row: dict[str, Any]) -> str:
    """A row's top-1 in percent, naming where it was measured when that is not the full test split
    and saying "flip TTA" when it averages each image with its mirror (neither is comparable with
    a plain full-split figure)."""
    accuracy = f"{100 * row['accuracy']:.2f}%"
    if row.get("evaluated_on", "test") != "test":
        accuracy += f" ({row['evaluated_on']})"
    return accuracy + (" (flip TTA)" if row.get("tta") else "")


def runs_table(rows: Sequence[dict[str, Any]], scorers: Sequence[str], title: str = "runs") -> Table:
    """A rich table of the rows; a check mark follows each score that meets its track's threshold.

    The accuracy cell names where it was measured when that is not the full test split."""
    table = Table(title=title)
    columns = ["run", "kind", "dataset", "model", "accuracy", "params M", "MACs M", "size MB", *scorers]
    if any("latency_ms" in row for row in rows):
        columns.append("latency ms")
    columns.append("Pareto")
    for column in columns:
        table.add_column(column, justify="left" if column in ("run", "kind", "dataset", "model") else "right")
    for row in rows:
        cells = [row["name"], row.get("kind", "train"), row["dataset"], row["model"], accuracy_cell(row),
                 f"{row['params'] / 1e6:.3f}",
                 f"{row['macs'] / 1e6:.1f}", f"{row['size_bytes'] / 1e6:.3f}"]
        cells += [f"{row[f'{s}_score']:.4g} {'✓' if row[f'{s}_qualifies'] else '✗'}" for s in scorers]
        if "latency ms" in columns:
            cells.append(f"{row['latency_ms']:.2f}" if row.get("latency_ms") is not None else "-")
        cells.append("★" if row.get("pareto") else "")
        table.add_row(*cells)
    return table

