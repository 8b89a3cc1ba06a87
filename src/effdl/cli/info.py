"""`effdl info CKPT`: what a checkpoint holds (architecture, transforms, data, config, metrics, lineage).

stdout is the JSON description (scripts parse it); the lineage is also printed to stderr as numbered
lines for a reader, unless --json asks for the JSON alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from effdl.cli.common import checkpoint_file


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="describe a checkpoint")
    p.add_argument("checkpoint", type=checkpoint_file, help="a .safetensors checkpoint")
    p.add_argument("--json", action="store_true", help="print only the JSON (no lineage lines on stderr)")
    p.set_defaults(func=run)


def lineage_lines(lineage: list[dict[str, Any]]) -> list[str]:
    """One numbered line per lineage entry, oldest first: stage, method, run, accuracy (or source).
    A distilled model's lineage is its teacher's, then the distillation, which trained a new student."""
    lines = []
    for number, entry in enumerate(lineage, 1):
        stage = " ".join(str(part) for part in (entry.get("stage", "?"), entry.get("method")) if part)
        where = f"run {entry['run']}" if entry.get("run") else f"from {entry.get('source', '?')}"
        if entry.get("teachers"):  # a fresh student, not the model above trained further
            where += f" (a new {entry.get('model', 'model')} taught by {', '.join(map(str, entry['teachers']))})"
        accuracy = entry.get("accuracy")
        shown = f"accuracy {accuracy:.4f}" if isinstance(accuracy, (int, float)) else "accuracy not recorded"
        lines.append(f"{number}. {stage}  {where}  {shown}")
    return lines


def run(args: argparse.Namespace) -> int:
    from effdl.checkpoint import load_model, read_checkpoint
    from effdl.models.catalog import PARAMETERS_COUNTED, count_parameters

    tensors, meta = read_checkpoint(args.checkpoint)
    weights = {k: v for k, v in tensors.items() if k.startswith("model/")}
    meta.pop("train_state", None) and meta.update(resumable=True)
    # the model is rebuilt so that parameters and buffers are told apart (as `models` and `score` count)
    model, _ = load_model(args.checkpoint)
    info = {
        "file": args.checkpoint,
        "parameters": count_parameters(model),
        "parameters_counted": PARAMETERS_COUNTED,
        "tensors": len(weights),
        **meta,
        "lineage": meta.get("lineage") or [],  # [] for a checkpoint written before lineage existed
    }
    print(json.dumps(info, indent=2))
    if not getattr(args, "json", False):
        print("lineage:", file=sys.stderr)
        for line in lineage_lines(info["lineage"]) or ["(none recorded: written before lineage existed)"]:
            print(f"  {line}", file=sys.stderr)
    return 0
