"""Image folders (PATH/train/<class>/*, PATH/test/<class>/* or PATH/val/<class>/*) decoded into uint8 tensors.

Decoding tens of thousands of small files is slow, so it happens once: the result is cached as .npy
arrays (see `effdl.data.cache`) keyed by the folder and a fingerprint of its files (relative path,
size and modification time of each), so a changed folder is decoded again. Class names are the
train folder's sub-folder names, sorted (torchvision's ImageFolder convention).
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from effdl.data.cache import cache_root, load_arrays, save_arrays
from effdl.errors import EffdlError

CACHE_FORMAT = 1  # bump when the cached layout changes
TEST_SPLIT_NAMES = ("test", "val")
PARALLEL_FROM = 4096  # below this many files a process pool costs more than it saves
CHUNK = 1024
Listing = list[tuple[str, int]]  # (file, label) pairs


@dataclass
class FolderImages:
    """A decoded image folder: uint8 [N, 3, H, W] images and int64 labels of both splits."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]  # of the train split, per channel, in [0, 1]
    std: tuple[float, ...]
    info: dict = field(default_factory=dict)


def read_image_folder(path: str | Path, image_size: int | tuple[int, int] | None = None) -> FolderImages:
    """Decode (or fetch from the cache) the image folder at `path`.

    All images must have one size unless `image_size` (an int for square, or (height, width)) is
    given, in which case every image is resized to it.
    """
    start = time.perf_counter()
    root = Path(path).expanduser().resolve()
    size = _checked_size(image_size)
    classes, train, test = _list_files(root)
    fingerprint = _fingerprint(root, train + test)
    entry = cache_root() / "datasets" / _entry_name(root, size)

    cached = load_arrays(entry, fingerprint)
    if cached is None:
        arrays, meta = _decode(root, classes, train, test, size)
        save_arrays(entry, fingerprint, arrays, meta)
    else:
        arrays, meta = cached
    tensors = {name: torch.from_numpy(array) for name, array in arrays.items()}
    info = {
        "source": str(root),
        "format": "imagefolder",
        "cache": "miss" if cached is None else "hit",
        "cache_entry": str(entry),
        "load_seconds": round(time.perf_counter() - start, 3),
    }
    return FolderImages(
        tensors["train_images"], tensors["train_labels"], tensors["test_images"], tensors["test_labels"],
        meta["classes"], tuple(meta["mean"]), tuple(meta["std"]), info,
    )  # fmt: skip


def _checked_size(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(side, int) and side > 0 for side in size):
        raise EffdlError(f"image_size must be a positive int or (height, width), not {image_size!r}")
    return size


def _list_files(root: Path) -> tuple[list[str], Listing, Listing]:
    """The class names and the train and test (file, label) pairs, checking the layout."""
    if not root.is_dir():
        raise EffdlError(f"image folder {root} does not exist")
    train_dir = root / "train"
    test_dir = next((root / name for name in TEST_SPLIT_NAMES if (root / name).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise EffdlError(
            f"{root} is not an image folder: expected {root}/train/<class>/* and {root}/test/<class>/* (or val/)"
        )
    try:
        classes, class_to_idx = find_classes(train_dir)
        train = make_dataset(train_dir, class_to_idx, IMG_EXTENSIONS)
        unknown = sorted(set(find_classes(test_dir)[0]) - set(classes))
        if unknown:
            raise EffdlError(f"{test_dir} has classes that {train_dir} lacks: {', '.join(unknown)}")
        test = make_dataset(test_dir, class_to_idx, IMG_EXTENSIONS, allow_empty=True)
    except FileNotFoundError as exc:
        raise EffdlError(f"{root}: {exc}") from None
    if not test:
        raise EffdlError(f"{test_dir} holds no images ({', '.join(IMG_EXTENSIONS)})")
    return classes, train, test


def _fingerprint(root: Path, files: Listing) -> str:
    digest = hashlib.sha256(f"effdl-imagefolder-{CACHE_FORMAT}\n".encode())
    prefix = len(str(root)) + 1  # files are listed under root: keep the fingerprint independent of where root is
    for file, label in files:
        stat = os.stat(file)
        digest.update(f"{file[prefix:]}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _entry_name(root: Path, size: tuple[int, int] | None) -> str:
    key = hashlib.sha256(f"{root}\n{size}".encode()).hexdigest()[:16]
    return f"{root.name}-{key}"


def _decode(
    root: Path, classes: list[str], train: Listing, test: Listing, size: tuple[int, int] | None
) -> tuple[dict[str, np.ndarray], dict]:
    files = [file for file, _ in train + test]
    decoded = _decode_all(files, size)
    shapes = {image.shape for image in decoded}
    if len(shapes) > 1:
        first = decoded[0].shape
        odd = next(i for i, image in enumerate(decoded) if image.shape != first)
        raise EffdlError(
            f"images in {root} differ in size ({files[0]}: {first[1]}x{first[0]}, {files[odd]}: "
            f"{decoded[odd].shape[1]}x{decoded[odd].shape[0]}); pass image_size= to resize them"
        )
    images = np.ascontiguousarray(np.stack(decoded).transpose(0, 3, 1, 2))  # NHWC -> NCHW
    arrays = {
        "train_images": images[: len(train)],
        "train_labels": np.array([label for _, label in train], dtype=np.int64),
        "test_images": images[len(train) :],
        "test_labels": np.array([label for _, label in test], dtype=np.int64),
    }
    mean, std = channel_stats(torch.from_numpy(arrays["train_images"]))
    return arrays, {"classes": classes, "mean": mean, "std": std}


def _decode_all(files: list[str], size: tuple[int, int] | None) -> list[np.ndarray]:
    chunks = [files[i : i + CHUNK] for i in range(0, len(files), CHUNK)]
    workers = min(os.cpu_count() or 1, 8)
    if len(files) < PARALLEL_FROM or workers == 1:
        return [image for chunk in chunks for image in _decode_chunk(chunk, size)]
    with ProcessPoolExecutor(workers) as pool:
        return [image for part in pool.map(_decode_chunk, chunks, [size] * len(chunks)) for image in part]


def _decode_chunk(files: list[str], size: tuple[int, int] | None) -> list[np.ndarray]:
    """HWC uint8 RGB arrays of `files`, resized to `size` (height, width) if given."""
    out = []
    for file in files:
        try:
            with Image.open(file) as image:
                image = image.convert("RGB")
                if size is not None and image.size != (size[1], size[0]):
                    image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                out.append(np.asarray(image))
        except (UnidentifiedImageError, OSError) as exc:
            raise EffdlError(f"cannot decode image {file}: {exc}") from None
    return out


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 [N, C, H, W] images, in [0, 1] units."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for part in images.split(chunk):
        values = part.double()
        total += values.sum((0, 2, 3))
        squares += values.square().sum((0, 2, 3))
    count = images.numel() / images.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return (mean / 255).tolist(), (std / 255).tolist()
