"""Argument helpers shared by the CLI commands: data, device, and 'checkpoint or model name'."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effdl.errors import EffdlError

if TYPE_CHECKING:  # torch & co. are imported where used, so that `effdl --help` stays fast
    from torch import nn

    from effdl.data import ImageDataset


def add_data_args(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--data", default=default, help="dataset: cifar10, cifar100, imagefolder:PATH, synthetic")
    parser.add_argument("--data-root", default=None, help="where datasets live (default: $EFFDL_DATA)")


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")


def dataset_from_args(args: argparse.Namespace, config: dict[str, Any] | None = None) -> ImageDataset:
    """The dataset named on the command line, else the one a checkpoint's config names."""
    from effdl.data import load_dataset

    config = config or {}
    name = args.data or config.get("dataset")
    root = args.data_root or config.get("data_root")
    if not name:
        raise EffdlError("no dataset given: pass --data NAME")
    return load_dataset(name, root=root)


def model_from_ref(ref: str, num_classes: int = 10) -> tuple[nn.Module, dict[str, Any]]:
    """A model from a checkpoint path, or a fresh one from a registered name (meta is then {})."""
    from effdl.checkpoint import load_model
    from effdl.models import create_model

    if ref.endswith(".safetensors") or Path(ref).exists():
        return load_model(ref)
    return create_model(ref, num_classes=num_classes).eval(), {}


def checkpoint_file(text: str) -> str:
    """argparse type of a checkpoint argument: the path, or at once (before torch is even imported)
    the EffdlError the loader would raise if there is no such file."""
    if not Path(text).is_file():
        raise EffdlError(f"checkpoint not found: {text}")
    return text


def checkpoint_or_model(text: str) -> str:
    """argparse type of a 'checkpoint or registered model name' argument: a missing .safetensors
    file is an EffdlError at once; names are checked by the command."""
    return checkpoint_file(text) if text.endswith(".safetensors") else text


def int_list(text: str, what: str, length: int | None = None) -> tuple[int, ...]:
    """Parse '3,32,32' into (3, 32, 32); an EffdlError naming `what` unless `length` positive integers."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1 or (length is not None and len(values) != length):
        count = f"{length} " if length else ""
        raise EffdlError(f"{what} must be {count}comma-separated positive integers, got '{text}'")
    return values


def add_distill_args(p: argparse.ArgumentParser, teacher: str) -> None:
    """--distill ALPHA and --distill-temperature T, for commands that fine-tune a compressed model."""
    p.add_argument("--distill", type=float, default=0.0, metavar="ALPHA",
                   help=f"fine-tune with knowledge distillation from {teacher}, weight ALPHA in (0, 1] "
                        "(e.g. 0.9); 0: labels only")
    p.add_argument("--distill-temperature", type=float, default=4.0, metavar="T",
                   help="softening temperature of the distillation (default 4)")
