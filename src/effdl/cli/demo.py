"""`effdl demo`: the end-to-end demo (train, evaluate, score, export, time) on CIFAR-10."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="end-to-end demo on CIFAR-10")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--subset", type=int, default=None, help="train on this many images (quicker)")
    p.add_argument("--data-root", default=None, help="default: $EFFDL_DATA")
    p.add_argument("--out-dir", default="runs")
    p.add_argument("--name", default="demo")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from effdl.demo import run_demo

    run_dir = Path(args.out_dir) / args.name
    if run_dir.exists():  # the demo always starts afresh
        shutil.rmtree(run_dir)
    run_demo(args.out_dir, args.name, args.model, args.epochs, args.data_root, args.subset)
    return 0
