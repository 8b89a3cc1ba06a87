"""`effdl distill`: train a student model from scratch while it learns from a teacher checkpoint.

    effdl distill --teacher runs/r56/best.safetensors --student resnet20 --method dkd --epochs 30
    effdl distill --teacher a.safetensors,b.safetensors --student mobilenet_v2 --method kd --alpha 0.9
    effdl distill --teacher T.safetensors --student resnet20 --method fitnets --layers layers.1=layers.1

Methods: kd (Hinton), dkd (decoupled KD), kd-std (KD on standardized logits), fitnets (hints
through a learned 1x1 connector), at (attention transfer), overhaul (pre-ReLU features with a
margin). Feature methods pair layers by module path (STUDENT=TEACHER); without --layers, stages
of the same spatial size are paired. Every `effdl train` flag applies (--epochs, --lr, --data...);
the dataset defaults to the teacher's. The run directory is a training run's, and its summary
records the teachers, the method and both accuracies.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from effdl.cli.common import flag_values, yaml_value
from effdl.cli.train import add_config_flags
from effdl.errors import EffdlError
from effdl.train.config import TrainConfig, merge, read_config_file


def register(subparsers) -> None:
    from effdl.pipelines.distill import DistillConfig

    p = subparsers.add_parser("distill", help="train a student from a teacher checkpoint (knowledge distillation)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fields = DistillConfig.model_fields

    def described(name: str) -> str:
        return fields[name].description.replace("%", "%%")

    p.add_argument("--teacher", dest="d:teacher", required=True, metavar="CKPT[,CKPT...]", help=described("teacher"))
    p.add_argument("--student", dest="cfg:model", default=None, metavar="MODEL",
                   help="the student architecture, one of `effdl models` or tv:NAME (alias of --model)")
    p.add_argument("--method", dest="d:method", default=None, metavar="METHOD", help=described("method") + " (default: kd)")
    for name in ("alpha", "beta", "temperature"):
        p.add_argument(f"--{name}", dest=f"d:{name}", type=float, default=None, metavar="X", help=described(name))
    p.add_argument("--layers", dest="d:layers", nargs="+", default=None, metavar="S=T", help=described("layers"))
    p.add_argument("--method-options", dest="d:method_options", default=None, metavar="YAML",
                   help=described("method_options"))
    p.add_argument("--config", help="YAML file of DistillConfig keys (TrainConfig's and the ones above; flags override it)")
    p.add_argument("--data", dest="cfg:dataset", default=None, metavar="NAME",
                   help="alias of --dataset (default: the teacher's dataset)")
    p.add_argument("--out", metavar="RUN_DIR", default=None, help="the run directory: --out-dir PARENT --name NAME")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run of the same name")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run at --out (give the flags it was started with)")
    add_config_flags(p, TrainConfig)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """The DistillConfig the flags (over --config) describe; EffdlError (one line) if invalid."""
    from effdl.pipelines.distill import make_distill_config

    values = read_config_file(args.config) if args.config else {}
    overrides = flag_values(args)
    for key, value in vars(args).items():
        if key.startswith("d:") and value is not None:
            overrides[key[2:]] = value
    if isinstance(overrides.get("method_options"), str):
        options = yaml_value(overrides["method_options"], "--method-options")
        if not isinstance(options, dict):
            raise EffdlError(f"--method-options is a YAML mapping such as '{{ramp_epochs: 2}}', got {overrides['method_options']!r}")
        overrides["method_options"] = options
    if args.out:
        if "out_dir" in overrides or "name" in overrides:
            raise EffdlError("--out RUN_DIR is --out-dir and --name in one: give either, not both")
        overrides["out_dir"], overrides["name"] = str(Path(args.out).parent), Path(args.out).name
    return make_distill_config(merge(values, overrides), source=args.config or "arguments")


def run(args: argparse.Namespace) -> int:
    from effdl.pipelines.distill import distill

    config = config_from_args(args)
    if args.resume and args.overwrite:
        raise EffdlError("--resume continues the run at --out and --overwrite replaces it: give one of them")
    result = distill(config, overwrite=args.overwrite, resume=args.resume)
    summary = json.loads((Path(result.run_dir) / "summary.json").read_text())
    print(json.dumps({"accuracy": result.accuracy, "teacher_accuracy": summary.get("teacher_accuracy"),
                      "method": config.method, "epochs": result.epochs, "time_s": round(result.time_s, 1),
                      "images_per_s": round(result.images_per_s, 1), "run_dir": result.run_dir}))
    return 0
