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
    """The data flags, the same in every command that reads a dataset (train has them as config keys).

    --data, --data-root, --image-size, --resize, --train-limit, --test-limit; `dataset_from_args`
    reads them. Commands that reload a checkpoint's dataset default to its recorded data.
    """
    parser.add_argument("--data", default=default,
                        help="dataset: cifar10, cifar100, imagefolder:PATH, synthetic"
                             + (f" (default: {default})" if default else " (default: the checkpoint's)"))
    parser.add_argument("--data-root", default=None, help="where datasets live (default: $EFFDL_DATA)")
    parser.add_argument("--image-size", default=None, metavar="SIZE",
                        help="bring every image to SIZE: 64 (square) or HxW such as 64x80; needed when a "
                             "folder's images differ in size (default: the checkpoint's recorded size, "
                             "else the images' own)")
    parser.add_argument("--resize", default=None, choices=("crop", "stretch"),
                        help="how images reach --image-size: crop (resize the shorter side, then "
                             "centre-crop; keeps the aspect ratio; default) or stretch (exactly that size)")
    parser.add_argument("--train-limit", type=int, default=None, metavar="N",
                        help="use a class-balanced seeded subset of N training images (only those are "
                             "decoded when no cache exists)")
    parser.add_argument("--test-limit", type=int, default=None, metavar="N",
                        help="evaluate on a class-balanced seeded subset of N test images (smoke tests)")


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")


def dataset_from_args(
    args: argparse.Namespace, meta: dict[str, Any] | None = None, model: nn.Module | None = None
) -> ImageDataset:
    """The dataset the data flags (`add_data_args`) describe, for the model or checkpoint at hand.

    `meta` is a checkpoint's metadata (as `load_model` returns it; a bare run config is accepted
    too); `model`, a model whose data record (`model.effdl_data`) wins over the checkpoint's. With
    a record: without --data its dataset is used, without --image-size its image size and resize
    policy, and its normalisation always (`effdl.data.load_dataset_for`). The limits and their seed
    (--seed where the command has one) are applied while loading.
    """
    from effdl.pipelines.sources import dataset_for

    return dataset_for(meta, model, data=args.data, data_root=getattr(args, "data_root", None),
                       image_size=getattr(args, "image_size", None), resize=getattr(args, "resize", None),
                       train_limit=getattr(args, "train_limit", None), test_limit=getattr(args, "test_limit", None),
                       limit_seed=getattr(args, "seed", None) or 0)


def model_from_ref(ref: str, num_classes: int = 10) -> tuple[nn.Module, dict[str, Any]]:
    """A model from a checkpoint path, or a fresh one from a registered name (meta is then {})."""
    from effdl.pipelines.sources import load_source

    return load_source(ref, num_classes)


def checkpoint_file(text: str) -> str:
    """argparse type of a checkpoint argument: the path, or at once (before torch is even imported)
    the EffdlError the loader would raise if there is no such file."""
    if not Path(text).is_file():
        from effdl.fileio import missing_checkpoint

        raise EffdlError(missing_checkpoint(text))
    return text


def output_file(text: str) -> str:
    """argparse type of a file the command writes: a folder, or a path under a file, is an
    EffdlError at once, before any work."""
    from effdl.fileio import check_output_file

    check_output_file(text)
    return text


def checkpoint_or_model(text: str) -> str:
    """argparse type of a 'checkpoint or registered model name' argument: a missing .safetensors
    file (or a folder) is an EffdlError at once; names are checked by the command."""
    as_path = text.endswith(".safetensors") or ("/" in text and Path(text).is_dir())  # a bare word is a name
    return checkpoint_file(text) if as_path else text


# Names and paths stay the text given even where it looks like YAML (a run named "2024", "@exp").
TEXT_KEYS = ("name", "out_dir", "dataset", "data_root", "model", "device")


def flag_values(args: argparse.Namespace, prefix: str = "cfg:") -> dict[str, Any]:
    """{config key: value} of the config flags given (`prefix` + key in `args`), each value read as
    YAML ('0.1' -> 0.1, '[30, 60]' -> a list) but TEXT_KEYS' as given; EffdlError naming the flag for
    text that is not YAML."""
    values = {}
    for key, text in vars(args).items():
        if key.startswith(prefix) and text is not None:
            name = key[len(prefix):]
            values[name] = str(text) if name in TEXT_KEYS else yaml_value(
                text, "--" + key.partition(":")[2].replace("_", "-"))
    return values


def yaml_value(text: str, flag: str) -> Any:
    """`text` read as YAML; EffdlError (one line, naming `flag`) where it is not valid YAML."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise EffdlError(f"{flag}: {text!r} is not a valid value ({problem}); quote lists and mappings "
                         "whole, such as '[30, 60]' or '{width: 0.5}'") from None


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
    p.add_argument("--distill-method", default="kd", metavar="METHOD",
                   help="kd (default), kd-std or dkd (logits), fitnets, at or overhaul (features of the "
                        "model's stages); for all but kd and kd-std, ALPHA scales the method's own loss")
