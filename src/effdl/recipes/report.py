"""A recipe's final report: every branch's stages measured the same way, on one plot and in one table.

Written to `<out>/<recipe>/report/` by effdl.report.make_report over every stage that made a
checkpoint, and over the recipe's `from:` run when it is one (the same measuring as `effdl report`): runs.csv / runs.json (accuracy, parameters,
MACs, size, each score, batch-1 ONNX Runtime latency as the model deploys) and
accuracy_vs_score.png (every stage of every branch, the Pareto front, the track's threshold),
plus stages.md: one table per branch in stage order, with each measuring stage's own result
(an export's check, a bench's speed-up) on its own line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effdl.console import say
from effdl.errors import EffdlError

if TYPE_CHECKING:
    from effdl.recipes.plan import Plan
    from effdl.recipes.runner import RecipeResult


@dataclass
class ReportOptions:
    """The `report:` mapping of a recipe."""

    latency: bool = True  # time every checkpoint in ONNX Runtime at batch 1
    threads: int = 1  # ONNX Runtime intra-op threads for that timing
    scorers: list[str] = field(default_factory=lambda: ["imt2024"])  # the first one is plotted
    threshold: float | None = None  # accuracy line on the plot (a fraction); None: the track's

    def validate(self) -> None:
        if self.threads < 1:
            raise EffdlError(f"report threads must be >= 1, got {self.threads}")
        if not self.scorers:
            raise EffdlError("report scorers must name at least one scorer, such as imt2024")
        from effdl.measure.scoring import scorer_names

        for name in self.scorers:
            if name not in scorer_names():
                from effdl.errors import unknown_name_error

                raise unknown_name_error("report scorer", name, scorer_names())
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise EffdlError(f"report threshold is a fraction in (0, 1), got {self.threshold}")


def report_options(values: dict[str, Any]) -> ReportOptions:
    from effdl.recipes.stages import build_options

    return build_options(ReportOptions, dict(values))


def _cell(value: Any, kind: str) -> str:
    if value is None or value == "":
        return "-"
    if kind == "int":
        return f"{value:,}"
    if kind == "score":
        return f"{value:.4f}"
    if kind == "ms":
        return f"{value:.3f}"
    return str(value)


def _accuracy(row: dict[str, Any]) -> str:
    from effdl.report.table import accuracy_cell

    return accuracy_cell(row) if row.get("accuracy") is not None else "-"


def _measure_note(kind: str, result: dict[str, Any]) -> str:
    """One line for a measuring stage's result."""
    if kind == "export":
        check = result.get("check") or {}
        note = check.get("note") or check.get("summary") or ""
        return (f"{Path(str(result.get('onnx', '?'))).name}, {result.get('bytes', 0) / 1e6:.2f} MB"
                + (f"; check: {note}" if note else ""))
    if kind == "bench":
        lat = [r for r in result.get("latency") or result.get("latencies") or [] if r.get("batch_size") == 1]
        return "; ".join(f"{r['backend']} batch 1: {r['median_ms']:.3f} ms" for r in lat) or "timed"
    if kind == "score":
        scores = result.get("scores") or result.get("results") or []
        if isinstance(scores, list):
            return "; ".join(f"{s.get('scorer')}: {s.get('score'):.4f}" for s in scores if isinstance(s, dict)
                             and s.get("score") is not None) or "scored"
    return "done"


def _source_run(plan: Plan) -> Path | None:
    """The run folder of the recipe's `from:` checkpoint, when it is a run's best.safetensors next
    to its summary.json (then the report measures the start too)."""
    if not plan.recipe.source:
        return None
    source = Path(plan.recipe.source)
    if source.name == "best.safetensors" and (source.parent / "summary.json").is_file():
        return source.parent
    return None


def write_report(plan: Plan, outcome: RecipeResult) -> dict[str, Any] | None:
    """Measure every finished checkpoint stage and write the report files (module docstring);
    returns {"rows": [...], "start": the `from:` run's row or None, "files": {...}} or None when no
    stage made a checkpoint."""
    from rich.console import Console
    from rich.table import Table

    from effdl.recipes.plan import keys_text
    from effdl.report import make_report

    options = report_options(plan.recipe.report)
    finished = [s for s in plan.stages if s.kind.makes_checkpoint and s.folder in outcome.results]
    out = plan.recipe.directory / "report"
    if not finished:
        return None
    say(f"measuring {len(finished)} checkpoint(s) for the report (counts, scores"
        f"{', ONNX Runtime batch-1 latency' if options.latency else ''})...")
    paths = [plan.directory(s) for s in finished]
    start = _source_run(plan)
    if start is not None:  # the starting point, measured the same way, in the same run
        paths.insert(0, start)
    report = make_report(paths, out, scorers=options.scorers,
                         threshold=options.threshold, latency=options.latency, latency_threads=options.threads,
                         latency_backend="onnx")
    rows = {Path(row["path"]).name: row for row in report.rows}
    start_row = rows.get(start.name) if start is not None else None
    scorer = report.plotted_scorer
    columns = [("stage", None), ("accuracy", "pct"), (f"{scorer}", "score"), ("MACs", "int"), ("params", "int"),
               ("size bytes", "int"), ("ONNX ms (b=1)", "ms"), ("graph", None), ("pareto", None)]
    lines = [f"# recipe {plan.recipe.name}", ""]
    console = Console()  # the report is the command's result: stdout (progress went to stderr)
    if not console.is_terminal:
        console.width = max(console.width, 150)
    for number, branch in enumerate(plan.branches, start=1):
        choices = keys_text(branch[-1].choices, "no fan-out")
        lines += [f"## branch {number} ({choices})", "",
                  "| " + " | ".join(c for c, _ in columns) + " |", "|" + "---|" * len(columns)]
        table = Table(title=f"{plan.recipe.name}, branch {number} ({choices})")
        for column, _ in columns:
            table.add_column(column, justify="left" if column in ("stage", "graph") else "right")
        notes = []
        if start_row is not None:
            cells = [f"from {start.name}", _accuracy(start_row),
                     _cell(start_row.get(f"{scorer}_score"), "score"), _cell(start_row.get("macs"), "int"),
                     _cell(start_row.get("params"), "int"), _cell(start_row.get("size_bytes"), "int"),
                     _cell(start_row.get("latency_ms"), "ms"), _cell(start_row.get("latency_graph"), ""),
                     "yes" if start_row.get("pareto") else ""]
            lines.append("| " + " | ".join(cells) + " |")
            table.add_row(*cells)
        for stage in branch:
            result = outcome.results.get(stage.folder)
            if result is None:
                status = "failed" if stage.folder in outcome.failed else "not run"
                cells = [stage.folder, status] + ["-"] * (len(columns) - 2)
            elif stage.kind.makes_checkpoint:
                row = rows.get(stage.folder, {})
                cells = [stage.folder, _accuracy(row), _cell(row.get(f"{scorer}_score"), "score"),
                         _cell(row.get("macs"), "int"), _cell(row.get("params"), "int"),
                         _cell(row.get("size_bytes"), "int"), _cell(row.get("latency_ms"), "ms"),
                         _cell(row.get("latency_graph"), ""), "yes" if row.get("pareto") else ""]
            else:
                notes.append(f"- {stage.folder}: {_measure_note(stage.spec.kind, result)}")
                continue
            lines.append("| " + " | ".join(cells) + " |")
            table.add_row(*cells)
        lines += ["", *notes, ""]
        console.print(table)
        for note in notes:
            console.print(note)
    lines.append(f"Plot: accuracy_vs_score.png ({scorer}; the Pareto front over every branch). "
                 "Latency: median of ONNX Runtime batch-1 runs with "
                 f"{options.threads} thread(s), the graph as the model deploys.")
    (out / "stages.md").write_text("\n".join(lines) + "\n")
    files = {k: str(v) for k, v in report.files.items()} | {"md": str(out / "stages.md")}
    console.print(f"report: {out}/ (stages.md, runs.csv, runs.json, accuracy_vs_score.png)")
    return {"rows": [r for r in report.rows if r is not start_row], "start": start_row, "files": files}
