"""The training configuration: one validated pydantic model, loadable from YAML and CLI flags.

Unknown keys are errors that name the key, so a typo in a config file never silently trains
with a default.
"""

from __future__ import annotations

import difflib
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from effdl.data import AugmentConfig
from effdl.errors import EffdlError, UnreadOptionError


# Keys that change how a run reports, not what it computes: a resumed run or a recipe's rerun may
# change them (a progress bar turned off does not make another run).
PRESENTATION_KEYS = ("progress", "tensorboard")
# Settings of the machine a run is on, not of the run: a recorded channels_last true (every run before
# it defaulted to None) hangs AVX2-only CPUs, so runs that continue or inherit a config read it afresh.
MACHINE_KEYS = ("channels_last", "data_root")


def for_this_machine(values: dict[str, Any]) -> dict[str, Any]:
    """A recorded config to continue or inherit here: channels_last true (the old default) back to
    None, this machine's choice (`effdl.device.default_channels_last`); an explicit false is kept."""
    return {**values, "channels_last": None} if values.get("channels_last") is True else values


class TrainConfig(BaseModel):
    """Everything that determines a training run."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str | None = Field(None, description="run directory name under out_dir; none: MODEL-DATASET-TIME")
    out_dir: str = Field("runs", description="folder that holds the run directories")
    dataset: str = Field("cifar10", description="cifar10, cifar100, imagefolder:PATH or synthetic")
    data_root: str | None = Field(None, description="where datasets live; none: $EFFDL_DATA")

    @field_validator("data_root")
    @classmethod
    def _absolute_root(cls, root: str | None) -> str | None:
        # Recorded in every checkpoint: a relative root would mean the folder a later command runs
        # from, not the one this run was started from (`effdl eval` elsewhere looked in the wrong place).
        return os.path.abspath(os.path.expanduser(root)) if root else root

    model: str = Field("resnet20",
        description="architecture, one of `effdl models`, or tv:NAME for a torchvision model")
    model_kwargs: dict[str, Any] = Field(default_factory=dict,
        description="extra keyword arguments of the model, as a YAML mapping (e.g. '{width: 32}')")
    # The data flags every command shares (effdl.cli.common.add_data_args); see effdl.data.load_dataset.
    image_size: int | str | list[int] | None = Field(
        None, description="bring every image to this size: 64 or HxW such as 64x80 (needed when images differ in size)")
    resize: Literal["crop", "stretch"] = Field(
        "crop", description="how images reach image_size: crop (shorter side, then centre crop) or stretch")
    train_limit: int | None = Field(
        None, ge=0, description="train on a class-balanced seeded subset of this many images (decoded alone)")
    test_limit: int | None = Field(None, ge=0, description="evaluate on a class-balanced seeded subset of this many")
    subset: int | None = Field(None,
        description="older spelling of train_limit (applied after val_size is held out); old configs use it")
    subset_per_class: int | None = Field(None, description="train on this many seeded images of each class")
    val_size: int = Field(0,
        description="hold out this many training images; the best checkpoint is then chosen on them")

    epochs: int = Field(30, ge=1, description="passes over the training images")
    batch_size: int = Field(128, ge=1, description="training images per optimizer step")
    eval_batch_size: int = Field(512, ge=1, description="images per evaluation batch")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="sgd or adamw")
    lr: float = Field(0.1, gt=0, description="peak learning rate")
    momentum: float = Field(0.9, description="SGD momentum")
    nesterov: bool = Field(True, description="Nesterov momentum (sgd)")
    weight_decay: float = Field(5e-4, ge=0, description="weight decay")
    decay_bn_and_bias: bool = Field(False, description="weight decay on BatchNorm and bias parameters too")
    schedule: Literal["onecycle", "triangular", "cosine", "multistep", "constant"] = Field("onecycle",
        description="learning-rate schedule: onecycle, triangular, cosine, multistep or constant")
    warmup_epochs: float = Field(0.0, ge=0,
        description="epochs of learning-rate warm-up; onecycle/triangular default to 20% of training when 0")
    milestones: list[int] = Field(default_factory=list,
        description="multistep: epochs where lr *= gamma, as a YAML list such as '[30, 60]'")
    gamma: float = Field(0.1, description="multistep: learning-rate factor at each milestone")
    label_smoothing: float = Field(0.0, ge=0, lt=1,
        description="label smoothing of the cross-entropy targets, in [0, 1)")
    ema_decay: float | None = Field(None, gt=0, lt=1,
        description="keep an exponential moving average of the weights with this decay (e.g. 0.999); none: off")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm to this; none: off")
    augment: AugmentConfig = Field(default_factory=AugmentConfig,
        description="training augmentations (the --augment.* flags)")

    device: str = Field("auto", description="cpu, cuda, cuda:N or auto")
    bf16: bool | None = Field(None, description="bf16 autocast; none: on for CUDA and for CPUs with AMX")
    channels_last: bool | None = Field(None,
        description="NHWC activations; none: on for CUDA and for CPUs with AVX-512, off on AVX2-only CPUs "
                    "(where oneDNN's 1x1 stride-2 backward on 3-5 input channels hangs)")
    compile: bool = Field(False,
        description="torch.compile the model for training (faster epochs after a compile of a minute or more)")
    threads: int | None = Field(None, description="CPU threads for torch; none: torch's choice")
    sync_batchnorm: bool = Field(False,
        description="under torchrun with GPUs: BatchNorm statistics over the global batch (SyncBatchNorm)")
    seed: int = Field(0, description="seed of the initialisation, the data order and the augmentations")
    tta: bool = Field(False, description="evaluate with horizontal-flip test-time augmentation")
    progress: bool = Field(True, description="show progress: a live bar in a terminal, one line per epoch otherwise")
    tensorboard: bool = Field(False, description="also write TensorBoard logs into the run directory")

    @model_validator(mode="after")
    def _options_the_choices_read(self) -> TrainConfig:
        # An option only another optimizer or schedule reads would be ignored without a word.
        problems = _unread_problems(self.model_dump())
        if problems:
            raise ValueError("; ".join(text for _, text in problems))
        if self.optimizer == "sgd" and self.nesterov and self.momentum <= 0:
            raise ValueError("nesterov needs momentum > 0: give momentum, or nesterov false for plain SGD")
        return self

    @classmethod
    def refuse_unread_settings(cls, values: dict[str, Any]) -> None:
        """Raise UnreadOptionError, naming the first key, where config `values` set a key their
        optimizer or schedule does not read (what validation refuses too; a recipe fan-out branch,
        effdl.recipes.plan, drops such a key instead when another branch reads it)."""
        problems = _unread_problems(values)
        if problems:
            raise UnreadOptionError(problems[0][1], problems[0][0][0])


# (choice, the value that reads them, keys): SGD's momentum, the multistep schedule's milestones.
READ_ONLY_WITH = (("optimizer", "sgd", ("momentum", "nesterov")), ("schedule", "multistep", ("milestones", "gamma")))


def unread_settings(values: dict[str, Any]) -> list[str]:
    """The keys of config `values` set away from their default that its optimizer or schedule does
    not read (momentum with adamw, milestones with cosine...)."""
    fields = TrainConfig.model_fields
    unread = []
    for chooser, reader, keys in READ_ONLY_WITH:
        if values.get(chooser, fields[chooser].default) != reader:
            unread += [key for key in keys if key in values and values[key] != fields[key].get_default(
                call_default_factory=True)]
    return unread


def _unread_problems(values: dict[str, Any]) -> list[tuple[list[str], str]]:
    """(keys, why) per choice of config `values` whose value leaves keys set that it does not read."""
    unread = unread_settings(values)
    problems = []
    for chooser, reader, keys in READ_ONLY_WITH:
        mine = [key for key in unread if key in keys]
        if mine:
            one = len(mine) == 1
            chosen = values.get(chooser, TrainConfig.model_fields[chooser].default)
            problems.append((mine, f"{' and '.join(mine)} {'is' if one else 'are'} read only with {chooser} {reader}; "
                                   f"{chooser} {chosen} does not use {'it' if one else 'them'}"))
    return problems


def without_unread_settings(values: dict[str, Any], where: str | None = None) -> dict[str, Any]:
    """`values` less `unread_settings`, for configs made elsewhere, where they never had an effect (a
    source run's config a fine-tune inherits, an older run's config.yaml, a sweep trial that varies
    the optimizer); `where` names the config in a warning, None drops them quietly."""
    unread = unread_settings(values)
    if unread and where is not None:
        warnings.warn(f"{where}: {', '.join(unread)} not read with its optimizer/schedule; left out", stacklevel=2)
    return {key: value for key, value in values.items() if key not in unread}


def _keys_at(model: type[BaseModel], parents: tuple) -> list[str]:
    """The keys of the (nested) section of `model` at `parents` ([] when it is no section)."""
    for part in parents:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def _explain(exc: ValidationError, source: str, model: type[BaseModel] | None = None) -> EffdlError:
    """One line for every problem pydantic found in a config of `model` (default TrainConfig)."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(err["loc"][-1]), _keys_at(model or TrainConfig, err["loc"][:-1]),
                                              n=2, cutoff=0.6)
            problems.append(f"unknown key '{where}'" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
        elif not where:  # a check across keys (a model validator): its own words
            problems.append(str(err["msg"]).removeprefix("Value error, "))
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
