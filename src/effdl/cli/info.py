"""`effdl info CKPT`: what a checkpoint holds (architecture, transforms, config, metrics)."""

from __future__ import annotations

import argparse
import json

from effdl.checkpoint import read_checkpoint


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="describe a checkpoint")
    p.add_argument("checkpoint")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    tensors, meta = read_checkpoint(args.checkpoint)
    weights = {k: v for k, v in tensors.items() if k.startswith("model/")}
    meta.pop("train_state", None) and meta.update(resumable=True)
    info = {
        "file": args.checkpoint,
        "parameters": sum(v.numel() for k, v in weights.items() if v.is_floating_point()),
        "tensors": len(weights),
        **meta,
    }
    print(json.dumps(info, indent=2))
    return 0
