"""`effdl demo`: the end-to-end demo (train, evaluate, score, export, int8, time) on CIFAR-10.

About 4 minutes on a quiet 2-core CPU: the shipped `demo` recipe (`effdl run demo` runs the same):
resnet20 trained for 2 epochs on a class-balanced 40,000 of the 50,000 training images (over 60%
on the full 10,000-image test split), exported to ONNX (checked against PyTorch), quantized to
int8, exported again, then counted, scored and timed in the recipe's report. Each call writes a
new folder (runs/demo, runs/demo-2, ...); `--name NAME` continues an unfinished demo of that name
(its finished stages are skipped), and `--name NAME --overwrite` replaces it.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from effdl.errors import EffdlError
from effdl.fileio import claim_run_dir

DEFAULT_NAME = "demo"


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="end-to-end demo on CIFAR-10 (a few minutes on a CPU)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20", help="architecture to train (default resnet20)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs (default 2)")
    p.add_argument("--train-limit", "--subset", dest="train_limit", type=int, default=40_000,
                   help="train on a class-balanced subset of this many images; 0: all (default 40000)")
    p.add_argument("--data-root", default=None, help="where datasets live (default: $EFFDL_DATA)")
    p.add_argument("--out-dir", default="runs", help="folder of the run directory (default runs)")
    p.add_argument("--name", default=None,
                   help=f"run directory name (default: the first free of {DEFAULT_NAME}, {DEFAULT_NAME}-2, ...)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run named --name (default: refuse, nothing is deleted)")
    p.set_defaults(func=run)


def _free(folder: Path) -> bool:
    """Missing, or an empty folder: nothing a demo could overwrite or resume."""
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))


def fresh_name(out_dir: str | Path, base: str = DEFAULT_NAME) -> str:
    """`base`, else `base-2`, `base-3`, ...: the first name under `out_dir` that holds nothing."""
    for i in range(1, 10_000):
        name = base if i == 1 else f"{base}-{i}"
        if _free(Path(out_dir) / name):
            return name
    raise EffdlError(f"no free run name {base}-N under {out_dir}; pass --name")


def run(args: argparse.Namespace) -> int:
    from effdl.demo import run_demo

    if args.epochs < 1:
        raise EffdlError(f"--epochs must be >= 1, got {args.epochs}")
    if args.name is None:
        if args.overwrite:
            raise EffdlError("--overwrite replaces the run named by --name: give --name too")
        name = fresh_name(args.out_dir)
    else:
        name = args.name
        folder = Path(args.out_dir) / name
        # a single run there (an old demo's layout) is refused unless --overwrite, as every command does
        claim_run_dir(folder, overwrite=args.overwrite, hint="pick another --name")
        if args.overwrite and not _free(folder):
            if not any((child / "stage.json").is_file() for child in folder.iterdir() if child.is_dir()):
                raise EffdlError(f"{folder} holds something other than a demo; pick another --name")
            shutil.rmtree(folder)
    run_demo(args.out_dir, name, args.model, args.epochs, args.data_root, args.train_limit or None)
    return 0
