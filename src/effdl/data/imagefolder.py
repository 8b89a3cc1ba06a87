"""Image folders (PATH/train/<class>/*, PATH/test/<class>/* or PATH/val/<class>/*) decoded into uint8 tensors.

Decoding tens of thousands of small files is slow, so it happens once: the result is cached as .npy
arrays (see `effdl.data.cache`) keyed by the folder, the image size and resize policy, and a
fingerprint of its files (relative path, size and modification time of each, and the listing
rules' version), so a changed folder is decoded again. Class names are the train folder's
sub-folder names, sorted (torchvision's ImageFolder convention).

What is read: files with an image extension (torchvision's IMG_EXTENSIONS: .jpg, .png, ...) in
class folders, at any depth. Hidden entries (names starting with '.', such as Jupyter's
`.ipynb_checkpoints/` or macOS's `._x.jpg`) and other files (README.txt, labels.csv) are skipped,
as other tools do, and listed once: in a warning and in `info["ignored"]`.

Images of different sizes need an `image_size` (an int for square, (height, width), or "HxW")
and a `resize` policy (see `resize_image`): "crop" resizes the shorter side and centre-crops the
other (keeps the aspect ratio; the default), "stretch" resizes to exactly that size.

`train_limit` / `test_limit` keep a class-balanced seeded subset (`effdl.data.splits.limit_indices`,
the selection `effdl.data.limited` makes). With a cache entry the cached arrays are sliced;
without one only the chosen files are decoded (and nothing is cached, since the entry holds
whole splits).
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS

from effdl.data.cache import cache_root, load_arrays, save_arrays
from effdl.data.splits import check_limit, limit_indices, limits_record
from effdl.errors import EffdlError

CACHE_FORMAT = 2  # bump when the cached layout or the listing rules change (2: hidden and non-image entries skipped)
TEST_SPLIT_NAMES = ("test", "val")
PARALLEL_FROM = 4096  # below this many files a process pool costs more than it saves
CHUNK = 1024
IGNORED_EXAMPLES = 5  # ignored entries named in the warning and info (all are counted)
Listing = list[tuple[str, int]]  # (file, label) pairs
ResizePolicy = Literal["crop", "stretch"]
RESIZE_POLICIES = ("crop", "stretch")


@dataclass
class FolderImages:
    """A decoded image folder: uint8 [N, 3, H, W] images and int64 labels of both splits."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]  # of the (loaded) train split, per channel, in [0, 1]
    std: tuple[float, ...]
    info: dict = field(default_factory=dict)


def read_image_folder(
    path: str | Path,
    image_size: int | str | tuple[int, int] | list[int] | None = None,
    resize: ResizePolicy = "crop",
    *,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
) -> FolderImages:
    """Decode (or fetch from the cache) the image folder at `path` (module docstring).

    All images must have one size unless `image_size` is given; then every image is brought to it
    by the `resize` policy. `info` records the source, cache use, "image_size" and "resize" (None
    when no image_size was asked), "ignored" entries and "limits".
    """
    start = time.perf_counter()
    root = Path(path).expanduser().resolve()
    size = checked_image_size(image_size)
    policy = checked_resize(resize)
    check_limit(train_limit, "training")
    check_limit(test_limit, "test")
    classes, train, test, ignored = _list_files(root)
    if ignored["count"]:
        shown = ", ".join(ignored["examples"]) + (", ..." if ignored["count"] > len(ignored["examples"]) else "")
        warnings.warn(f"{root}: skipped {ignored['count']} hidden or non-image entries ({shown})", stacklevel=2)
    fingerprint = _fingerprint(root, train + test)
    entry = cache_root() / "datasets" / _entry_name(root, size, policy)
    keep_train = limit_indices(torch.tensor([label for _, label in train]), train_limit, seed)
    keep_test = limit_indices(torch.tensor([label for _, label in test]), test_limit, seed)
    limited = keep_train is not None or keep_test is not None

    cached = load_arrays(entry, fingerprint, mmap=limited)
    if cached is not None:
        arrays, meta = cached
        if limited:  # memory-mapped: only the kept rows are read
            arrays = _sliced(arrays, keep_train, keep_test)
            if keep_train is not None:  # statistics of the training images actually loaded
                meta = {**meta, **_stats(arrays)}
        status = "hit"
    elif limited:
        arrays = _decode(root, _kept(train, keep_train), _kept(test, keep_test), size, policy)
        meta = {"classes": classes, **_stats(arrays)}
        status = "partial"
    else:
        arrays = _decode(root, train, test, size, policy)
        meta = {"classes": classes, **_stats(arrays)}
        save_arrays(entry, fingerprint, arrays, meta)
        status = "miss"
    tensors = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in arrays.items()}
    info = {
        "source": str(root),
        "format": "imagefolder",
        "cache": status,
        "cache_entry": str(entry),
        "image_size": list(size) if size else None,
        "resize": policy if size else None,
        "ignored": ignored,
    }
    if limited or train_limit or test_limit:
        info["limits"] = limits_record(train_limit, test_limit, seed)
    info["load_seconds"] = round(time.perf_counter() - start, 3)
    return FolderImages(
        tensors["train_images"], tensors["train_labels"], tensors["test_images"], tensors["test_labels"],
        meta["classes"], tuple(meta["mean"]), tuple(meta["std"]), info,
    )  # fmt: skip


def checked_image_size(image_size: int | str | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    """(height, width) from an int (square), "64" or "64x80" (height x width), or a pair; None stays None.

    Raises EffdlError for anything else, or a side below 1.
    """
    if image_size is None:
        return None
    value = image_size
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        try:
            value = [int(part) for part in parts]
        except ValueError:
            value = None
        if value is not None and len(value) == 1:
            value = value[0]
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    size = tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(size) != 2 or not all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in size):
        raise EffdlError(
            f"image_size must be a positive size: 64 (square) or 64x80 (height x width), not {image_size!r}"
        )
    return size


def checked_resize(resize: str) -> ResizePolicy:
    """`resize` if it is a known policy, else an EffdlError naming them."""
    if resize not in RESIZE_POLICIES:
        raise EffdlError(f"unknown resize policy '{resize}': use crop (keep the aspect ratio) or stretch")
    return resize


def resize_image(image: Image.Image, size: tuple[int, int], policy: ResizePolicy) -> Image.Image:
    """`image` brought to `size` (height, width) by `policy`, bilinear (antialiased when shrinking).

    "crop": scale so the image covers the size (the shorter side, relative to the target, fits
    exactly), then cut the centre (torchvision's Resize + CenterCrop; `PIL.ImageOps.fit`).
    "stretch": resize to exactly the size, changing the aspect ratio if it differs.
    """
    target = (size[1], size[0])  # PIL sizes are (width, height)
    if image.size == target:
        return image
    if policy == "crop":
        return ImageOps.fit(image, target, method=Image.Resampling.BILINEAR)
    return image.resize(target, Image.Resampling.BILINEAR)


def _kept(files: Listing, keep: torch.Tensor | None) -> Listing:
    return files if keep is None else [files[i] for i in keep.tolist()]


def _sliced(arrays: dict[str, np.ndarray], keep_train: torch.Tensor | None, keep_test: torch.Tensor | None):
    out = {}
    for split, keep in (("train", keep_train), ("test", keep_test)):
        for kind in ("images", "labels"):
            array = arrays[f"{split}_{kind}"]
            out[f"{split}_{kind}"] = np.array(array) if keep is None else array[keep.numpy()]  # copies, off the map
    return out


def _stats(arrays: dict[str, np.ndarray]) -> dict[str, list[float]]:
    mean, std = channel_stats(torch.from_numpy(np.ascontiguousarray(arrays["train_images"])))
    return {"mean": mean, "std": std}


def _hidden(name: str) -> bool:
    return name.startswith(".")


def is_image_file(name: str) -> bool:
    """Whether a file named `name` is read as an image: an image extension, not hidden."""
    return not _hidden(name) and name.lower().endswith(IMG_EXTENSIONS)


def _list_files(root: Path) -> tuple[list[str], Listing, Listing, dict]:
    """The class names, the train and test (file, label) pairs, and what was skipped; checks the layout."""
    if not root.is_dir():
        raise EffdlError(f"image folder {root} does not exist")
    train_dir = root / "train"
    test_dir = next((root / name for name in TEST_SPLIT_NAMES if (root / name).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise EffdlError(
            f"{root} is not an image folder: expected {root}/train/<class>/* and {root}/test/<class>/* (or val/)"
        )
    skipped: list[str] = []
    classes = _class_folders(train_dir, root, skipped)
    if not classes:
        raise EffdlError(f"{train_dir} has no class folders (expected {train_dir}/<class>/*)")
    test_classes = _class_folders(test_dir, root, skipped)
    unknown = sorted(set(test_classes) - set(classes))
    if unknown:
        raise EffdlError(f"{test_dir} has classes that {train_dir} lacks: {', '.join(unknown)}")
    train = _class_files(train_dir, classes, classes, root, skipped)
    test = _class_files(test_dir, test_classes, classes, root, skipped)
    if not train:
        raise EffdlError(f"{train_dir} holds no images ({', '.join(IMG_EXTENSIONS)})")
    if not test:
        raise EffdlError(f"{test_dir} holds no images ({', '.join(IMG_EXTENSIONS)})")
    return classes, train, test, {"count": len(skipped), "examples": skipped[:IGNORED_EXAMPLES]}


def _class_folders(split_dir: Path, root: Path, skipped: list[str]) -> list[str]:
    """Sorted names of the visible sub-folders of `split_dir`; anything else there goes to `skipped`."""
    classes = []
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if entry.is_dir() and not _hidden(entry.name):
            classes.append(entry.name)
        else:
            skipped.append(os.path.relpath(entry.path, root))
    return classes


def _class_files(split_dir: Path, present: list[str], classes: list[str], root: Path, skipped: list[str]) -> Listing:
    """(file, label) pairs of the images under each class folder, in torchvision's order (sorted walk)."""
    label = {name: i for i, name in enumerate(classes)}
    files: Listing = []
    for name in sorted(present):
        walked = []
        for folder, subfolders, names in os.walk(split_dir / name, followlinks=True):
            skipped.extend(os.path.relpath(os.path.join(folder, sub), root) for sub in subfolders if _hidden(sub))
            subfolders[:] = [sub for sub in subfolders if not _hidden(sub)]  # os.walk does not descend into these
            walked.append((folder, names))
        for folder, names in sorted(walked):
            for file in sorted(names):
                path = os.path.join(folder, file)
                if not is_image_file(file):
                    skipped.append(os.path.relpath(path, root))
                else:
                    files.append((path, label[name]))
    return files


def _fingerprint(root: Path, files: Listing) -> str:
    digest = hashlib.sha256(f"effdl-imagefolder-{CACHE_FORMAT}\n".encode())
    prefix = len(str(root)) + 1  # files are listed under root: keep the fingerprint independent of where root is
    for file, label in files:
        stat = os.stat(file)
        digest.update(f"{file[prefix:]}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _entry_name(root: Path, size: tuple[int, int] | None, policy: ResizePolicy) -> str:
    key = hashlib.sha256(f"{root}\n{size}\n{policy if size else None}\n{CACHE_FORMAT}".encode()).hexdigest()[:16]
    return f"{root.name}-{key}"


def _decode(
    root: Path, train: Listing, test: Listing, size: tuple[int, int] | None, policy: ResizePolicy
) -> dict[str, np.ndarray]:
    files = [file for file, _ in train + test]
    decoded = _decode_all(files, size, policy)
    shapes = {image.shape for image in decoded}
    if len(shapes) > 1:
        first = decoded[0].shape
        odd = next(i for i, image in enumerate(decoded) if image.shape != first)
        raise EffdlError(
            f"images in {root} differ in size ({files[0]}: {first[1]}x{first[0]}, {files[odd]}: "
            f"{decoded[odd].shape[1]}x{decoded[odd].shape[0]}); pass --image-size SIZE (e.g. 64 or HxW, "
            f"image_size= in Python) with --resize crop or stretch to bring them to one size"
        )
    images = np.ascontiguousarray(np.stack(decoded).transpose(0, 3, 1, 2))  # NHWC -> NCHW
    return {
        "train_images": images[: len(train)],
        "train_labels": np.array([label for _, label in train], dtype=np.int64),
        "test_images": images[len(train) :],
        "test_labels": np.array([label for _, label in test], dtype=np.int64),
    }


def _decode_all(files: list[str], size: tuple[int, int] | None, policy: ResizePolicy) -> list[np.ndarray]:
    chunks = [files[i : i + CHUNK] for i in range(0, len(files), CHUNK)]
    workers = min(os.cpu_count() or 1, 8)
    if len(files) < PARALLEL_FROM or workers == 1:
        return [image for chunk in chunks for image in _decode_chunk(chunk, size, policy)]
    with ProcessPoolExecutor(workers) as pool:
        parts = pool.map(_decode_chunk, chunks, [size] * len(chunks), [policy] * len(chunks))
        return [image for part in parts for image in part]


def _decode_chunk(files: list[str], size: tuple[int, int] | None, policy: ResizePolicy) -> list[np.ndarray]:
    """HWC uint8 RGB arrays of `files`, brought to `size` (height, width) by `policy` if given."""
    out = []
    for file in files:
        try:
            with Image.open(file) as image:
                image = image.convert("RGB")
                if size is not None:
                    image = resize_image(image, size, policy)
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
