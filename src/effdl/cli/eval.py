"""`effdl eval CKPT`: top-1 accuracy of a checkpoint on the full test split.

A dataset with other classes than the checkpoint's (count, or names when both record them) is
refused with one line naming both.
"""

from __future__ import annotations

import argparse
import json
import sys

from effdl.cli.common import add_data_args, add_device_arg, checkpoint_file, dataset_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="accuracy of a checkpoint on the test split")
    p.add_argument("checkpoint", type=checkpoint_file, help="a .safetensors checkpoint")
    p.add_argument("--tta", action="store_true", help="average with horizontally flipped images")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a last.safetensors")
    p.add_argument("--batch-size", type=int, default=512, help="images per evaluation batch (default 512)")
    add_data_args(p)
    add_device_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from effdl.checkpoint import load_model
    from effdl.data import BatchLoader
    from effdl.device import resolve_device
    from effdl.measure import evaluate
    from effdl.measure.accuracy import check_model_fits_data

    model, meta = load_model(args.checkpoint, namespace="ema" if args.ema else "model")
    data = dataset_from_args(args, meta, model)  # the data it was trained for, unless flags say otherwise
    check_model_fits_data(model, data)
    device = resolve_device(args.device)
    model = model.to(device, memory_format=torch.channels_last)
    loader = BatchLoader.for_split(data, "test", batch_size=args.batch_size, device=device, channels_last=True)
    print(f"evaluating on {len(loader.labels):,} test images...", file=sys.stderr)
    acc = evaluate(model, loader, tta=args.tta, autocast=False)
    print(json.dumps({"accuracy": acc.top1, "correct": acc.correct, "total": acc.total, "loss": round(acc.loss, 4),
                      "dataset": data.name, "tta": args.tta}))
    return 0
