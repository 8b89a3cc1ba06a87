"""The training configuration: one validated pydantic model, loadable from YAML and CLI flags.

Unknown keys are errors that name the key, so a typo in a config file never silently trains
with a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from effdl.data import AugmentConfig
from effdl.errors import EffdlError


class TrainConfig(BaseModel):
    """Everything that determines a training run."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str | None = None  # run directory name under out_dir (default: model-dataset-time)
    out_dir: str = "runs"
    dataset: str = "cifar10"
    data_root: str | None = None  # default: $EFFDL_DATA
    model: str = "resnet20"
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    subset: int | None = None  # train on a seeded subset of this many images
    subset_per_class: int | None = None
    val_size: int = 0  # hold out this many training images; best checkpoint is then chosen on them

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)  # peak learning rate
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    decay_bn_and_bias: bool = False  # weight decay on BatchNorm and bias parameters too
    schedule: Literal["onecycle", "triangular", "cosine", "multistep", "constant"] = "onecycle"
    warmup_epochs: float = Field(0.0, ge=0)  # onecycle/triangular default to 20% of training when 0
    milestones: list[int] = Field(default_factory=list)  # multistep: epochs where lr *= gamma
    gamma: float = 0.1
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    ema_decay: float | None = Field(None, gt=0, lt=1)  # exponential moving average of weights
    grad_clip: float | None = Field(None, gt=0)  # max gradient norm
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    device: str = "auto"
    bf16: bool | None = None  # bf16 autocast; default: on for CUDA and for CPUs with AMX
    channels_last: bool = True  # NHWC activations: faster with cuDNN and oneDNN alike (2-5x on CPU)
    compile: bool = False  # torch.compile the model for training
    threads: int | None = None  # CPU threads for torch (default: torch's choice)
    seed: int = 0
    tta: bool = False  # evaluate with horizontal-flip test-time augmentation
    progress: bool = True
    tensorboard: bool = False


def _explain(exc: ValidationError, source: str) -> EffdlError:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key '{where}'")
        else:
            problems.append(f"{where}: {err['msg']}")
    return EffdlError(f"invalid config ({source}): " + "; ".join(problems))


def make_config(values: dict[str, Any], source: str = "arguments") -> TrainConfig:
    """Validate `values` into a TrainConfig, turning validation errors into one clear line."""
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        raise _explain(exc, source) from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict (not yet validated)."""
    path = Path(path)
    if not path.is_file():
        raise EffdlError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise EffdlError(f"config file {path} is not valid YAML{where}") from None
    if not isinstance(values, dict):
        raise EffdlError(f"config file {path} must hold a mapping of keys to values")
    return values


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` updated with `overrides`; dotted keys ('augment.cutout') reach into nested sections."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in overrides.items():
        target = out
        *parents, leaf = key.split(".")
        for p in parents:
            target = target.setdefault(p, {})
            if not isinstance(target, dict):
                raise EffdlError(f"config key '{p}' is not a section")
        target[leaf] = value
    return out


def save_config(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
