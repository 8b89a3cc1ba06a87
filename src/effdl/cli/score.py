"""`effdl score CKPT|MODEL`: per-layer complexity and the scores of spec/scoring.md, optionally with
the accuracy measured on the full test split and whether the entry reaches the track's threshold."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from effdl.cli.common import (
    add_data_args, add_device_arg, checkpoint_or_model, dataset_from_args, int_list, model_from_ref,
)
from effdl.errors import unknown_name_error

if TYPE_CHECKING:  # torch & co. are imported where used, so that `effdl --help` stays fast
    import torch
    from torch import nn

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


def _cast_inputs(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`model` fed the float32 batches the loaders produce, cast to its (half-precision) `dtype`."""
    from torch import nn

    class _CastInputs(nn.Module):
        def __init__(self, model: nn.Module, dtype: torch.dtype):
            super().__init__()
            self.model, self.dtype = model, dtype

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x.to(self.dtype))

    return _CastInputs(model, dtype)


def chosen_tracks(scorer: str, track: str | None, dataset: str | None) -> list[tuple[str, str]]:
    """(scorer, track) pairs to compute: `scorer` or all of them, on `track` where it exists."""
    from effdl.measure.scoring import TRACKS

    if scorer != "all" and scorer not in TRACKS:
        raise unknown_name_error("scorer", scorer, [*TRACKS, "all"])
    scorers = list(TRACKS) if scorer == "all" else [scorer]
    if track is not None and not any(track in TRACKS[s] for s in scorers):
        known = sorted({t for s in scorers for t in TRACKS[s]})
        raise unknown_name_error(f"track of {scorer}", track, known)
    pairs = []
    for name in scorers:
        tracks = TRACKS[name]
        if track is not None and (scorer != "all" or track in tracks):
            pairs.append((name, track))
        else:
            pairs.append((name, dataset if dataset in tracks else next(iter(tracks))))
    return pairs


def run(args: argparse.Namespace) -> int:
    import torch

    from effdl.data import BatchLoader
    from effdl.device import resolve_device
    from effdl.measure import evaluate, profile, score
    from effdl.models.registry import data_meta, model_input_size

    model, meta = model_from_ref(args.model, num_classes=args.num_classes)
    config = meta.get("config") or {}
    record = data_meta(model) or {}
    dataset_name = args.data or record.get("dataset") or config.get("dataset")
    pairs = chosen_tracks(args.scorer, args.track, dataset_name)
    notes = []
    shape = model_input_size(model)  # the size the model was trained at
    if args.input_size is not None:
        override = int_list(args.input_size, "--input-size")
        if record.get("input_size") and override != shape:
            notes.append(f"note: measured at --input-size {'x'.join(map(str, override))}; the model was trained "
                         f"at {'x'.join(map(str, shape))}" + (" (its accuracy is measured at that size)"
                                                              if args.eval else ""))
        shape = override
    if args.half:
        model = model.half()
    prof = profile(model, (1, *shape))
    results = [score(prof, s, t, freebie=args.freebie) for s, t in pairs]
    accuracy, data_name = None, None
    if args.eval:
        from effdl.measure.accuracy import check_model_fits_data

        data = dataset_from_args(args, meta, model)  # the model's recorded data unless flags say otherwise
        check_model_fits_data(model, data)  # before any work, with the same words as every other command
        data_name = data.name
        if tuple(data.image_shape) != tuple(model_input_size(model)):
            notes.append(f"note: accuracy measured on {'x'.join(map(str, data.image_shape))} images; the model "
                         f"was trained at {'x'.join(map(str, model_input_size(model)))}")
        device = resolve_device(args.device)
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        evaluated = _cast_inputs(model, dtype).to(device)
        loader = BatchLoader.for_split(data, "test", batch_size=512, device=device)
        print(f"evaluating on {len(loader.labels):,} test images...", file=sys.stderr)
        accuracy = evaluate(evaluated, loader, tta=args.tta)
    if args.json:
        print(json.dumps(report_dict(args.model, prof, results, accuracy, data_name, notes), indent=2))
    else:
        print_report(args.model, prof, results, accuracy, data_name, notes)
    return 0


def report_dict(name: str, prof: ModelProfile, results: list[ScoreResult], accuracy: Accuracy | None,
                dataset: str | None, notes: list[str] | None = None) -> dict[str, Any]:
    from effdl.models.catalog import PARAMETERS_COUNTED

    out: dict[str, Any] = {"model": name, "profile": prof.to_dict(), "parameters_counted": PARAMETERS_COUNTED,
                           "notes": list(notes or []), "scores": []}
    for result in results:
        entry = result.to_dict()
        if accuracy is not None:
            entry["qualifies"] = result.qualifies(accuracy.correct, accuracy.total)
        out["scores"].append(entry)
    if accuracy is not None:
        out["accuracy"] = {"top1": accuracy.top1, "correct": accuracy.correct, "total": accuracy.total,
                           "loss": accuracy.loss, "dataset": dataset}
    return out


def _bits(record) -> str:
    weight = "-" if record.weight_bits is None else str(record.weight_bits)
    return f"{weight}/{record.act_bits}"


def print_report(name: str, prof: ModelProfile, results: list[ScoreResult], accuracy: Accuracy | None,
                 dataset: str | None, notes: list[str] | None = None) -> None:
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
        console.print(f"accuracy on {dataset} test split: {accuracy.top1:.2%} "
                      f"({accuracy.correct:,} of {accuracy.total:,} correct)")
        mismatched = sorted({r.track for r in results if r.track != dataset})
        if mismatched:
            console.print(f"note: tracks {', '.join(mismatched)} are defined on another dataset than {dataset}")
