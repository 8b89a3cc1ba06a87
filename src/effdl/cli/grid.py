"""`effdl grid`: a PNG grid of augmented training images, to see what the model sees."""

from __future__ import annotations

import argparse

from effdl.cli.common import add_data_args, dataset_from_args, flag_values, output_file
from effdl.cli.train import add_config_flags
from effdl.data import AugmentConfig  # light: the config alone, no torch
from effdl.errors import EffdlError


def register(subparsers) -> None:
    p = subparsers.add_parser("grid", help="save a grid of augmented training images (PNG)")
    add_data_args(p, default="cifar10")
    p.add_argument("--out", default="augmented.png", type=output_file, help="PNG file to write (default augmented.png)")
    p.add_argument("-n", type=int, default=64, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="seed of the images picked and their augmentations")
    add_config_flags(p, AugmentConfig, prefix="augment.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from effdl.data import save_augmentation_grid

    values = flag_values(args, "cfg:augment.")
    try:
        augment = AugmentConfig.model_validate(values)
    except ValueError as exc:
        raise EffdlError(f"invalid augmentation: {str(exc).splitlines()[0]}") from None
    data = dataset_from_args(args)
    path = save_augmentation_grid(data, args.out, n=args.n, augment=augment, seed=args.seed)
    print(f"wrote {path or args.out}")
    return 0
