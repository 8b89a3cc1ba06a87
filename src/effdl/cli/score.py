"""`effdl score CKPT|MODEL`: per-layer complexity and the scores of spec/scoring.md, optionally with
the accuracy measured on the full test split and whether the entry reaches the track's threshold.

The work is effdl.pipelines.score (`score_checkpoint`, `score_model`); this module reads the flags
and prints the report."""

from __future__ import annotations

import argparse
import json
import sys

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from effdl.cli.common import add_data_args, add_device_arg, checkpoint_or_model, int_list, model_from_ref

if TYPE_CHECKING:  # torch & co. are imported where used, so that `effdl --help` stays fast
    from effdl.measure import Accuracy, ModelProfile, ScoreResult


def register(subparsers) -> None:
    # Scorer names are spelled out, not imported from effdl.measure.scoring: that import (torch)
    # would cost seconds before any argument error (tests/test_cli.py checks they are all named).
    p = subparsers.add_parser("score", help="per-layer counts and the micronet / imt2021 / imt2024 scores")
    p.add_argument("model", type=checkpoint_or_model, help="checkpoint (.safetensors) or registered model name")
    p.add_argument("--scorer", default="all", help="micronet, imt2021, imt2024 or all (default all)")
    p.add_argument("--track", default=None,
                   help="track (micronet: cifar100, imagenet; imt2021: cifar10, cifar100; imt2024: cifar10); "
                        "default: the dataset's track, else the scorer's first")
    p.add_argument("--input-size", default=None,
                   help="shape of one input without the batch: C,H,W (or C,L for 1-D, C,D,H,W for 3-D models); "
                        "default: the size the model was trained at (recorded in its checkpoint), else 3,32,32")
    p.add_argument("--num-classes", type=int, default=10, help="classes, for a model name (default 10)")
    p.add_argument("--half", action="store_true", help="cast the model to float16 before measuring")
    p.add_argument("--freebie", action=argparse.BooleanOptionalAction, default=True,
                   help="micronet: count unquantized entries at 16 bits (default on)")
    p.add_argument("--eval", action="store_true", help="measure accuracy on the full test split and check the threshold")
    p.add_argument("--tta", action="store_true", help="with --eval: average with horizontally flipped images")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_data_args(p)
    add_device_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from effdl.pipelines.score import ScoreOptions, score_model

    override = int_list(args.input_size, "--input-size") if args.input_size is not None else None
    options = ScoreOptions(scorer=args.scorer, track=args.track, input_size=list(override) if override else None,
                           half=args.half, freebie=args.freebie, evaluate=args.eval, tta=args.tta,
                           device=args.device, data=args.data, data_root=args.data_root, image_size=args.image_size,
                           resize=args.resize, train_limit=args.train_limit, test_limit=args.test_limit)
    options.validate()  # before the model is loaded
    # Loaded here, through the one loader every command shares, then scored by the library.
    model, meta = model_from_ref(args.model, num_classes=args.num_classes)
    report = score_model(model, meta, options, name=args.model)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_report(report.name, report.profile, report.results, report.accuracy, report.dataset, report.notes,
                     report.accuracy_where)
    return 0


def _bits(record) -> str:
    weight = "-" if record.weight_bits is None else str(record.weight_bits)
    return f"{weight}/{record.act_bits}"


def print_report(name: str, prof: ModelProfile, results: list[ScoreResult], accuracy: Accuracy | None,
                 dataset: str | None, notes: list[str] | None = None, accuracy_where: str = "test split") -> None:
    from effdl.models.catalog import PARAMETERS_COUNTED

    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title=f"{name} on input {tuple(prof.input_shape)}")
    for column in ("layer", "kind", "output", "params", "MACs", "bits w/a", "sparsity"):
        table.add_column(column, justify="left" if column in ("layer", "kind", "output") else "right")
    for result in results:
        table.add_column(result.scorer, justify="right")
    shares = [{c.name: c.params / r.ref_params + c.ops / r.ref_ops for c in r.contributions} for r in results]
    for record in prof.layers:
        row = [record.name, record.kind, "x".join(map(str, record.output_shape[1:])), f"{record.params:,}",
               f"{record.macs:,}", _bits(record),
               f"{record.sparsity:.1%}" if record.weight_bits is not None else "-"]
        row += [f"{share.get(record.name, 0.0):.5f}" for share in shares]
        table.add_row(*row)
    table.add_section()
    table.add_row("total", "", "", f"{prof.params:,}", f"{prof.macs:,}", "", "",
                  *[f"{r.score:.5f}" for r in results])
    console.print(table)
    console.print(f"parameters {prof.params:,} ({PARAMETERS_COUNTED}); conv+linear+matmul weights "
                  f"{prof.weights:,}; MACs {prof.macs:,}; size {prof.size_bytes / 1e6:.3f} MB; "
                  f"peak activations {prof.peak_activation_bytes / 1e6:.3f} MB")
    for warning in prof.warnings:
        console.print(f"warning: {warning}")
    for note in notes or []:
        console.print(note)

    summary = Table(title="scores")
    for column in ("scorer", "track", "params", "ops", "param score", "op score", "score", "threshold"):
        summary.add_column(column, justify="left" if column in ("scorer", "track") else "right")
    if accuracy is not None:
        summary.add_column("qualifies", justify="center")
    for r in results:
        row = [r.scorer, r.track, f"{r.params:,.0f}", f"{r.ops:,.0f}", f"{r.param_score:.5f}",
               f"{r.op_score:.5f}", f"{r.score:.5f}", f"{float(r.threshold):.0%}"]
        if accuracy is not None:
            row.append("yes" if r.qualifies(accuracy.correct, accuracy.total) else "no")
        summary.add_row(*row)
    console.print(summary)
    for r in results:
        console.print(f"{r.scorer} {r.track}: reference {r.reference} "
                      f"({r.ref_params:,.0f} params, {r.ref_ops:,.0f} ops)")
        for note in r.notes:
            console.print(f"  {note}")
    if accuracy is not None:
        console.print(f"accuracy on {dataset} {accuracy_where}: {accuracy.top1:.2%} "
                      f"({accuracy.correct:,} of {accuracy.total:,} correct)")
        mismatched = sorted({r.track for r in results if r.track != dataset})
        if mismatched:
            console.print(f"note: tracks {', '.join(mismatched)} are defined on another dataset than {dataset}")
