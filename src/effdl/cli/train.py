"""`effdl train`: train a model from flags and/or a YAML config; `--resume RUN` continues a run.

Every TrainConfig field is a flag (`--batch-size`, `--augment.cutout`, ...), generated from the
config model so flags and config keys can never drift apart. Flag values are parsed as YAML
scalars/lists (`--milestones "[30, 60]"`), then the merged config is validated.
"""

from __future__ import annotations

import argparse
import json
import typing
from pathlib import Path

from pydantic import BaseModel

from effdl.cli.common import flag_values
# effdl.train.config is light (pydantic, no torch): `effdl train --help` needs no more.
from effdl.errors import EffdlError
from effdl.train.config import TrainConfig, make_config, merge, read_config_file


def _is_bool(annotation: typing.Any) -> bool:
    """bool, or bool | None."""
    return annotation is bool or set(typing.get_args(annotation)) == {bool, type(None)}


def add_config_flags(parser: argparse.ArgumentParser, model: type[BaseModel], prefix: str = "") -> None:
    """One flag per field of `model` (nested models as --section.field), its help the field's
    description. Values are YAML, read by the caller; a boolean flag alone means true, so
    `--compile` and `--compile true` both work (`--compile false` turns it off)."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            add_config_flags(parser, annotation, prefix=f"{prefix}{name}.")
            continue
        flag = "--" + (prefix + name).replace("_", "-")
        default = field.default if field.default_factory is None else field.default_factory()
        choices = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else ()
        if _is_bool(annotation):
            extra = {"nargs": "?", "const": "true", "metavar": "true|false"}
        else:
            extra = {"metavar": "|".join(map(str, choices)) if choices else "VALUE"}
        described = f"{field.description or ''} (default: {default})".strip()
        parser.add_argument(flag, dest=f"cfg:{prefix}{name}", default=None,
                            help=described.replace("%", "%%"), **extra)  # argparse %-formats help


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file of TrainConfig keys (flags override it)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run (other flags: only --epochs)")
    p.add_argument("--data", dest="cfg:dataset", default=None, metavar="NAME", help="alias of --dataset")
    p.add_argument("--out", metavar="RUN_DIR", default=None,
                   help="the run directory, as in prune and quantize: same as --out-dir PARENT --name NAME")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run of the same name (default: refuse, nothing is deleted)")
    add_config_flags(p, TrainConfig)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = read_config_file(args.config) if args.config else {}
    overrides = flag_values(args)
    if args.out:  # --out runs/x is --out-dir runs --name x
        if "out_dir" in overrides or "name" in overrides:
            raise EffdlError("--out RUN_DIR is --out-dir and --name in one: give either, not both")
        overrides["out_dir"], overrides["name"] = str(Path(args.out).parent), Path(args.out).name
    return make_config(merge(values, overrides), source=args.config or "arguments")


def run(args: argparse.Namespace) -> int:
    if args.resume:
        from effdl.train import resume

        epochs = getattr(args, "cfg:epochs")
        result = vars(resume(args.resume, epochs=int(epochs) if epochs is not None else None))
    else:
        # A one-stage recipe: the train stage of effdl.recipes, placed where the flags say.
        from effdl.recipes.stages import run_single_stage

        result = run_single_stage("train", config_from_args(args), None, overwrite=args.overwrite)
    from effdl.train.distributed import is_main

    if not is_main():  # under torchrun every process has the result; one prints it
        return 0
    print(json.dumps({"accuracy": result["accuracy"], "correct": result["correct"], "total": result["total"],
                      "epochs": result["epochs"], "time_s": round(result["time_s"], 1),
                      "images_per_s": round(result["images_per_s"], 1), "run_dir": str(result["run_dir"])}))
    return 0
