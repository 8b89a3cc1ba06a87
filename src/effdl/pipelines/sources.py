"""What the deploy stages (export, bench, score) read: a checkpoint or a registered model name, and
the dataset its calibration, check or evaluation images come from.

`load_source` and `DataOptions.dataset` are the library side of the CLI's `model_from_ref` and
`dataset_from_args` (effdl.cli.common calls them), so a recipe runner and the commands reload a
model and its data the same way. torch is imported inside the functions: importing this module
(and the options classes built on it) stays light for `effdl --help`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effdl.errors import EffdlError

if TYPE_CHECKING:
    from torch import nn

    from effdl.data import ImageDataset

RESIZE_POLICIES = ("crop", "stretch")


def load_source(source: str | Path, num_classes: int = 10) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, checkpoint metadata) from a checkpoint path, or a fresh model (metadata
    {}) from a registered name such as "resnet20" or "tv:mobilenet_v2" with `num_classes` outputs.

    Raises EffdlError for a missing or corrupt checkpoint and for an unknown model name.
    """
    from effdl.checkpoint import load_model
    from effdl.models import create_model

    ref = str(source)
    if ref.endswith(".safetensors") or Path(ref).exists():
        return load_model(ref)
    return create_model(ref, num_classes=num_classes).eval(), {}


def recorded_data_root(config: dict[str, Any]) -> str | None:
    """The data root a run recorded, where that folder exists; None (then $EFFDL_DATA, the default)
    for a checkpoint moved to another machine, or a relative root (runs recorded before roots were
    made absolute) that does not exist from the current folder."""
    root = config.get("data_root")
    return root if root and Path(root).expanduser().is_dir() else None


def dataset_for(
    meta: dict[str, Any] | None = None,
    model: nn.Module | None = None,
    *,
    data: str | None = None,
    data_root: str | None = None,
    image_size: int | str | list[int] | None = None,
    resize: str | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    limit_seed: int = 0,
) -> ImageDataset:
    """The dataset for the model or checkpoint at hand, as the data flags describe it.

    `meta` is a checkpoint's metadata (as `load_model` returns it; a bare run config is accepted
    too); `model`, a model whose data record (`model.effdl_data`) wins over the checkpoint's. With
    a record: without `data` its dataset is used, without `image_size` its image size and resize
    policy, and its normalisation always (`effdl.data.load_dataset_for`). Without one, `data` or
    the config's dataset is loaded as it is. The limits (class-balanced subsets, seeded by
    `limit_seed`) are applied while loading. EffdlError when no dataset is named or it cannot load.
    """
    from effdl.data import load_dataset, load_dataset_for

    meta = meta or {}
    is_checkpoint = any(key in meta for key in ("config", "data", "spec"))
    config = (meta.get("config") if is_checkpoint else meta) or {}
    record = None
    if model is not None:
        from effdl.models.registry import data_meta

        record = data_meta(model)
    if record is None and is_checkpoint:
        from effdl.checkpoint import checkpoint_data_meta

        record = checkpoint_data_meta(meta)
    root = data_root or recorded_data_root(config)
    options: dict[str, Any] = {"train_limit": train_limit, "test_limit": test_limit, "limit_seed": limit_seed or 0}
    if record:
        return load_dataset_for(record, root, name=data, image_size=image_size, resize=resize, **options)
    name = data or config.get("dataset")
    if not name:
        raise EffdlError("no dataset given: pass --data NAME")
    if resize is not None and image_size is None:
        raise EffdlError(f"--resize {resize} needs an image size to resize to: pass --image-size too")
    if image_size is not None:
        options.update(image_size=image_size, resize=resize or "crop")
    return load_dataset(name, root=root, **options)


def check_positive(value: Any, what: str, *, optional: bool = False, minimum: int = 1) -> None:
    """EffdlError naming `what` unless `value` is an integer >= `minimum` (or None when `optional`)."""
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise EffdlError(f"{what} must be an integer >= {minimum}, got {value!r}")


def check_input_size(input_size: Any, length: int | None = 3) -> None:
    """EffdlError unless `input_size` is None or `length` positive integers (C,H,W)."""
    if input_size is None:
        return
    sizes = list(input_size) if isinstance(input_size, (list, tuple)) else None
    if (not sizes or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in sizes)
            or (length is not None and len(sizes) != length)):
        count = f"{length} " if length else ""
        raise EffdlError(f"input_size must be {count}positive integers (C,H,W), got {input_size!r}")


@dataclass(kw_only=True)
class DataOptions:
    """Where a deploy stage's images come from: the flags `effdl.cli.common.add_data_args` adds.

    None everywhere means the model's recorded dataset, size and resize policy (else the
    checkpoint config's dataset).
    """

    data: str | None = None  # cifar10, cifar100, imagefolder:PATH, synthetic
    data_root: str | None = None  # default $EFFDL_DATA
    image_size: int | str | list[int] | None = None  # 64 or "64x80"
    resize: str | None = None  # crop | stretch
    train_limit: int | None = None
    test_limit: int | None = None

    def validate_data(self) -> None:
        """EffdlError for a resize policy or limit that cannot be right (the loader checks the rest)."""
        if self.resize is not None and self.resize not in RESIZE_POLICIES:
            raise EffdlError(f"unknown resize policy '{self.resize}'; use crop or stretch")
        check_positive(self.train_limit, "train_limit", optional=True, minimum=0)
        check_positive(self.test_limit, "test_limit", optional=True, minimum=0)

    def dataset(self, meta: dict[str, Any] | None = None, model: nn.Module | None = None) -> ImageDataset:
        """`dataset_for(meta, model)` with these options."""
        return dataset_for(meta, model, data=self.data, data_root=self.data_root, image_size=self.image_size,
                           resize=self.resize, train_limit=self.train_limit, test_limit=self.test_limit)
