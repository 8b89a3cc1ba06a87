"""`effdl info CKPT`: what a checkpoint holds (architecture, transforms, data, config, metrics)."""

from __future__ import annotations

import argparse
import json

from effdl.cli.common import checkpoint_file


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="describe a checkpoint")
    p.add_argument("checkpoint", type=checkpoint_file, help="a .safetensors checkpoint")
    p.set_defaults(func=run)


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
    }
    print(json.dumps(info, indent=2))
    return 0
