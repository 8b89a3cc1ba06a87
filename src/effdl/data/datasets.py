"""Datasets by name, decoded once into uint8 tensors held whole in memory.

`load_dataset(name, root=None, **options)` returns an `ImageDataset`: train and test images as
uint8 NCHW tensors, integer labels, class names and the normalisation constants. Names:

- `cifar10`, `cifar100`: looked for in the data root (`root`, else $EFFDL_DATA, else
  ~/.cache/effdl/data), first in `<root>/cifar10` (resp. `cifar100`), then in `<root>` itself.
  Either torchvision's format (`cifar-10-batches-py` / `cifar-100-python`) or an image folder
  (`train/<class>/*`, `test/<class>/*`) is read. If neither is there, torchvision downloads the
  dataset into `<root>/cifar10` (option `download=False` turns that off). Normalisation uses the
  usual published constants (for CIFAR-10, the course's).
- `imagefolder:PATH`: any `PATH/train/<class>/*` + `PATH/test/<class>/*` (or `PATH/val/`) tree
  (hidden and non-image entries skipped). Mean and std are measured on the (loaded) train split.
- `synthetic`: a small learnable random dataset for tests; options n_train, n_test, num_classes,
  size, seed.

Options of CIFAR and image folders: `image_size` (64, "64x80" or (64, 80): height x width) with `resize`
("crop": shorter side resized then centre-cropped, the default; "stretch": resized to exactly the
size; see `effdl.data.imagefolder.resize_image`), recorded in `info["image_size"]` and
`info["resize"]` and from there in a trained model's data record (`ImageDataset.data_meta`); and
`load_dataset`'s `train_limit` / `test_limit` (with `limit_seed`), for every format: a class-balanced seeded subset of each split, made
while loading where the format allows (image folders decode only the chosen files) and otherwise
right after, always the selection `effdl.data.limited` makes.

`load_dataset_for(record, ...)` reloads the data a model was trained for from its record
(`model.effdl_data`): same dataset, image size, resize policy and normalisation.

Image folders are decoded once and cached (see `effdl.data.imagefolder`).
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision

import numpy as np
from PIL import Image

from effdl.data.imagefolder import (
    ResizePolicy,
    checked_image_size,
    checked_resize,
    read_image_folder,
    resize_image,
)
from effdl.data.splits import check_limit, limited
from effdl.errors import EffdlError, unknown_name_error

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGEFOLDER_PREFIX = "imagefolder:"


@dataclass
class ImageDataset:
    """A whole dataset in memory. Images are uint8 [N, C, H, W]; labels int64 [N]."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    def data_meta(self) -> dict:
        """What a model trained on this dataset records about it (`effdl.models.registry.data_meta`)."""
        return {
            "dataset": self.name, "input_size": list(self.image_shape), "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std], "classes": list(self.classes), "resize": self.info.get("resize"),
        }


@dataclass(frozen=True)
class CifarSpec:
    torchvision_class: type
    torchvision_folder: str  # what torchvision's download unpacks
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


CIFAR = {
    "cifar10": CifarSpec(torchvision.datasets.CIFAR10, "cifar-10-batches-py", 10, CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": CifarSpec(torchvision.datasets.CIFAR100, "cifar-100-python", 100, CIFAR100_MEAN, CIFAR100_STD),
}


def default_data_root() -> Path:
    """Where datasets live unless told otherwise: $EFFDL_DATA, else ~/.cache/effdl/data."""
    return Path(os.environ.get("EFFDL_DATA") or Path.home() / ".cache" / "effdl" / "data").expanduser()


def synthetic_dataset(
    n_train: int = 512, n_test: int = 256, num_classes: int = 10, size: int = 32, seed: int = 0
) -> ImageDataset:
    """Smooth random class templates plus noise: learnable in a few epochs, for tests."""
    g = torch.Generator().manual_seed(seed)
    # Low-frequency templates, so that random crops and flips keep each class recognisable.
    coarse = torch.rand(num_classes, 3, 4, 4, generator=g) * 255
    templates = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=g)]
        noise = torch.randn(n, 3, size, size, generator=g) * 60
        images = (templates[labels] + noise).clamp(0, 255).to(torch.uint8)
        return images, labels

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    classes = [f"class{i}" for i in range(num_classes)]
    return ImageDataset("synthetic", train_x, train_y, test_x, test_y, classes, (0.5,) * 3, (0.25,) * 3)


def image_folder_dataset(
    path: str | Path,
    image_size: int | str | tuple[int, int] | list[int] | None = None,
    resize: ResizePolicy = "crop",
    **limits,
) -> ImageDataset:
    """The image folder at `path` (see `effdl.data.imagefolder`), normalised by its own train statistics.

    Named `imagefolder:<absolute path>`, so a model's data record finds it from any directory.
    `limits` are train_limit, test_limit and seed, applied while decoding.
    """
    folder = read_image_folder(path, image_size, resize, **limits)
    return ImageDataset(
        f"{IMAGEFOLDER_PREFIX}{Path(path).expanduser().absolute()}", folder.train_images, folder.train_labels,
        folder.test_images, folder.test_labels, folder.classes, folder.mean, folder.std, folder.info,
    )  # fmt: skip


def cifar_dataset(
    name: str,
    root: str | Path | None = None,
    download: bool = True,
    image_size: int | str | tuple[int, int] | list[int] | None = None,
    resize: ResizePolicy = "crop",
    **limits,
) -> ImageDataset:
    """CIFAR-10/100 from the data root, in torchvision's format or as an image folder (module docstring)."""
    spec = CIFAR[name]
    base = Path(root).expanduser() if root else default_data_root()
    places = [base / name, base]
    for place in places:
        if (place / spec.torchvision_folder).is_dir():
            return _cifar_from_torchvision(name, spec, place, False, image_size, resize, limits)
        if (place / "train").is_dir():
            return _cifar_from_image_folder(name, spec, place, image_size, resize, limits)
    reason = "not found"
    if download:
        try:
            return _cifar_from_torchvision(name, spec, places[0], True, image_size, resize, limits)
        except (OSError, RuntimeError) as exc:  # no network, or a broken archive
            reason = f"download failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    where = " or ".join(str(place) for place in places)
    raise EffdlError(
        f"{name} not found in {where} ({reason}); set EFFDL_DATA or --data-root to a folder holding {name}/ "
        f"(torchvision's {spec.torchvision_folder}/, or train/<class>/ and test/<class>/ images), "
        f"or pass --data imagefolder:PATH"
    )


def _cifar_from_torchvision(
    name: str, spec: CifarSpec, place: Path, download: bool, image_size, resize: ResizePolicy, limits: dict
) -> ImageDataset:
    start = time.perf_counter()
    size, policy = checked_image_size(image_size), checked_resize(resize)
    splits = {}
    for split in ("train", "test"):
        try:
            data = spec.torchvision_class(str(place), train=split == "train", download=download)
        except RuntimeError as exc:
            if download:
                raise
            raise EffdlError(f"{name} in {place}/{spec.torchvision_folder} is unreadable: {exc}") from None
        pixels = data.data  # NHWC uint8
        if size is not None and pixels.shape[1:3] != size:
            pixels = np.stack([np.asarray(resize_image(Image.fromarray(p), size, policy)) for p in pixels])
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        splits[split] = (images, torch.tensor(data.targets, dtype=torch.int64))
    info = {"source": str(place / spec.torchvision_folder), "format": "torchvision",
            "image_size": list(size) if size else None, "resize": policy if size else None}
    dataset = ImageDataset(name, *splits["train"], *splits["test"], list(data.classes), spec.mean, spec.std, info)
    # the pickled batches are read whole anyway: the limits cut the decoded tensors (same selection)
    dataset = limited(dataset, limits.get("train_limit"), limits.get("test_limit"), limits.get("seed", 0))
    dataset.info["load_seconds"] = round(time.perf_counter() - start, 3)
    return dataset


def _cifar_from_image_folder(
    name: str, spec: CifarSpec, place: Path, image_size, resize: ResizePolicy, limits: dict
) -> ImageDataset:
    folder = read_image_folder(place, image_size, resize, **limits)
    if len(folder.classes) != spec.num_classes:
        raise EffdlError(
            f"{place} holds {len(folder.classes)} classes, not the {spec.num_classes} of {name}; "
            f"point the data root at {name} itself, or use --data imagefolder:{place}"
        )
    return ImageDataset(
        name, folder.train_images, folder.train_labels, folder.test_images, folder.test_labels,
        folder.classes, spec.mean, spec.std, folder.info,
    )  # fmt: skip


def dataset_reader(name: str, root: str | Path | None = None) -> tuple[Callable[..., ImageDataset], tuple]:
    """The reader of dataset `name` and its leading arguments; EffdlError naming the known datasets
    for an unknown name (the check a recipe's plan makes before anything loads)."""
    if name.startswith(IMAGEFOLDER_PREFIX):
        path = name[len(IMAGEFOLDER_PREFIX) :]
        if not path:
            raise EffdlError("imagefolder: needs a path, as in imagefolder:PATH")
        return image_folder_dataset, (path,)
    if name in CIFAR:
        return cifar_dataset, (name, root)
    if name == "synthetic":
        return synthetic_dataset, ()
    raise unknown_name_error("dataset", name, ["synthetic", *CIFAR, f"{IMAGEFOLDER_PREFIX}PATH"])


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    train_limit: int | None = None,
    test_limit: int | None = None,
    limit_seed: int = 0,
    **options,
) -> ImageDataset:
    """Load dataset `name` (see module docstring), passing `options` to its reader.

    `train_limit` / `test_limit` keep a class-balanced subset of that many images of each split
    (None or 0: the whole split), selected with `limit_seed` as `effdl.data.limited` does; readers that
    can (image folders, CIFAR) apply them while loading. An unknown option is an EffdlError.
    """
    reader, args = dataset_reader(name, root)
    parameters = inspect.signature(reader).parameters
    accepted = [p for p in list(parameters)[len(args) :] if parameters[p].kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise EffdlError(f"dataset '{name}' has no option {', '.join(unknown)}; options: {', '.join(accepted)}")
    check_limit(train_limit, "training")
    check_limit(test_limit, "test")
    limits = {"train_limit": train_limit, "test_limit": test_limit, "seed": limit_seed}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return reader(*args, **options, **limits)  # limits applied while loading
    return limited(reader(*args, **options), train_limit, test_limit, limit_seed)


def load_dataset_for(
    record: dict,
    root: str | Path | None = None,
    *,
    name: str | None = None,
    image_size: int | str | tuple[int, int] | list[int] | None = None,
    resize: ResizePolicy | None = None,
    **options,
) -> ImageDataset:
    """The dataset a model was trained for, as it saw it, from its data record (`model.effdl_data`).

    `record` is a `data_meta` dict ({"dataset", "input_size", "mean", "std", "classes", "resize"}).
    The dataset is `name` if given, else the recorded one. Unless `image_size` is given, images are
    brought to the recorded input size with the recorded resize policy when the record has one
    (a record whose "resize" is None was trained on images that all had that size). The model's
    own normalisation (recorded mean and std) replaces the dataset's: it is what the weights
    expect, even when the reloaded split is a different subset. Other `options` (train_limit,
    test_limit, limit_seed, reader options) go to `load_dataset`.
    """
    record = record or {}
    name = name or record.get("dataset")
    if not name:
        raise EffdlError("the model records no dataset: pass --data NAME")
    if image_size is None and record.get("resize") and record.get("input_size"):
        image_size = [int(side) for side in record["input_size"][1:]]
        resize = resize or record["resize"]
    if image_size is not None:
        options = {**options, "image_size": image_size, "resize": resize or "crop"}
    elif resize is not None:
        raise EffdlError(f"resize '{resize}' needs an image size to resize to: pass --image-size too")
    data = load_dataset(name, root=root, **options)
    if record.get("mean") and record.get("std") and len(record["mean"]) == data.image_shape[0]:
        data.mean, data.std = tuple(record["mean"]), tuple(record["std"])
        data.info = {**data.info, "normalization": "model"}
    return data
