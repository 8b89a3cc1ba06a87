"""`effdl report RUNS...`: a table of runs (train, prune, quantize) with their scores, a Pareto plot, CSV, JSON.

Runs on different datasets get separate Pareto fronts and plot panels."""

from __future__ import annotations

import argparse

from rich.console import Console

from effdl.cli.common import int_list
from effdl.errors import EffdlError


def register(subparsers) -> None:
    # Scorer names are spelled out, not imported from effdl.measure.scoring (torch): that import would
    # cost seconds before any argument error (tests/test_cli.py checks they match the scorers).
    p = subparsers.add_parser("report", help="table and accuracy-vs-score plot over runs (train, prune, quantize)")
    p.add_argument("runs", nargs="+", help="run directories (runs/NAME), or folders holding them")
    p.add_argument("--out", default="reports", help="folder for runs.csv, runs.json, accuracy_vs_score.png")
    p.add_argument("--scorer", action="append", default=None,
                   help="scorer to compute, repeatable; the first is plotted (micronet, imt2021, imt2024; "
                        "default: those with a track for the runs' dataset)")
    p.add_argument("--track", default=None, help="track of the scorers (default: the runs' dataset, if a track)")
    p.add_argument("--threshold", type=float, default=None,
                   help="accuracy line on the plot, as a fraction (default: the plotted track's threshold)")
    p.add_argument("--latency", action="store_true", help="also time batch-1 PyTorch CPU latency of each run")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for --latency (default 1)")
    p.add_argument("--input-size", default=None,
                   help="C,H,W of one input for the counts (default: each run's model's own input size)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from effdl.report import make_report
    from effdl.report.table import runs_table

    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise EffdlError(f"--threshold is a fraction in [0, 1], got {args.threshold}")
    report = make_report(
        args.runs, args.out, scorers=args.scorer, track=args.track, threshold=args.threshold,
        latency=args.latency, latency_threads=args.threads,
        input_size=int_list(args.input_size, "--input-size", length=3) if args.input_size else None,
    )
    console = Console()
    if not console.is_terminal:  # piped or captured: rich would fall back to 80 columns
        console.width = max(console.width, 140)
    console.print(runs_table(report.rows, report.scorers, title=f"{len(report.rows)} runs"))
    console.print(f"✓: meets the track's accuracy threshold; ★: on its dataset's Pareto front of "
                  f"{report.plotted_scorer} score against accuracy")
    for path in report.files.values():
        console.print(f"wrote {path}")
    return 0
