"""Seeded, class-balanced subsets of a dataset's splits, and validation splits held out from training.

Both draw from one `balanced_order` of the training images: a seeded shuffle in which every class
takes its turn before any class appears again, so any prefix of it is as balanced as the class
sizes allow.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from effdl.errors import EffdlError

if TYPE_CHECKING:  # annotations only: the image-folder reader uses `limit_indices` before datasets exist
    from effdl.data.datasets import ImageDataset


def balanced_order(labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A seeded permutation of range(len(labels)) interleaving the classes round-robin."""
    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(len(labels), generator=generator)
    shuffled_labels = labels.cpu()[shuffled]
    grouped = torch.sort(shuffled_labels, stable=True).indices  # by class, shuffled within each class
    counts = torch.bincount(shuffled_labels)
    class_start = counts.cumsum(0) - counts
    rank = torch.empty_like(grouped)  # position of each image within its class
    rank[grouped] = torch.arange(len(labels)) - class_start[shuffled_labels[grouped]]
    return shuffled[torch.sort(rank, stable=True).indices]


def check_limit(limit: int | None, split: str) -> None:
    """An EffdlError unless `limit` is None or a number of images >= 0 (0 = no limit)."""
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise EffdlError(f"the {split} image limit must be a positive number of images, not {limit}")


def limit_indices(labels: torch.Tensor, limit: int | None, seed: int = 0) -> torch.Tensor | None:
    """Sorted indices of a class-balanced seeded selection of `limit` of `labels`, or None for all.

    The first `limit` of `balanced_order(labels, seed)`: the one selection behind `limited`,
    `subset(n=...)` and the image-folder reader's decode-only-what-is-used path, so a limit gives
    the same images whether applied while loading or after. None (or 0, or a limit of at least
    len(labels)) keeps every image.
    """
    if not limit or limit >= len(labels):
        return None
    return balanced_order(labels, seed)[:limit].sort().values


def subset(data: ImageDataset, n: int | None = None, per_class: int | None = None, seed: int = 0) -> ImageDataset:
    """`data` with a seeded subset of its training images: `n` in all, or `per_class` of each class.

    Either way the classes are balanced (to within one image for `n`); the test split is kept.
    """
    labels = data.train_labels
    if (n is None) == (per_class is None):
        raise EffdlError("subset needs exactly one of n (images in all) or per_class")
    if per_class is not None:
        smallest = int(torch.bincount(labels, minlength=data.num_classes).min())
        if not 0 < per_class <= smallest:
            raise EffdlError(f"per_class must be in 1..{smallest} (the smallest class), not {per_class}")
        n = per_class * data.num_classes
    elif not 0 < n <= len(labels):
        raise EffdlError(f"subset size n must be in 1..{len(labels)}, not {n}")
    keep = limit_indices(labels, n, seed)
    keep = torch.arange(len(labels)) if keep is None else keep
    keep = keep.to(labels.device)
    info = {**data.info, "subset": {"n": n, "per_class": per_class, "seed": seed}}
    return dataclasses.replace(data, train_images=data.train_images[keep], train_labels=labels[keep], info=info)


def limited(data: ImageDataset, train_limit: int | None, test_limit: int | None, seed: int = 0) -> ImageDataset:
    """`data` cut to class-balanced seeded subsets of its training and/or test images (smoke runs).

    A limit of None (or 0) keeps that split whole; a limit above the split's size keeps it whole.
    """
    check_limit(train_limit, "training")
    check_limit(test_limit, "test")
    if train_limit:
        data = subset(data, n=min(train_limit, len(data.train_labels)), seed=seed)
    keep = limit_indices(data.test_labels, test_limit, seed)
    if keep is not None:
        keep = keep.to(data.test_labels.device)
        data = dataclasses.replace(data, test_images=data.test_images[keep], test_labels=data.test_labels[keep])
    if train_limit or test_limit:
        data = dataclasses.replace(data, info={**data.info, "limits": limits_record(train_limit, test_limit, seed)})
    return data


def limits_record(train_limit: int | None, test_limit: int | None, seed: int) -> dict:
    """What `info["limits"]` says about a limited dataset (None: that split is whole)."""
    return {"train": train_limit or None, "test": test_limit or None, "seed": seed}


def train_val_split(data: ImageDataset, val_size: int | float, seed: int = 0) -> ImageDataset:
    """Hold out a class-balanced validation set from the training split.

    Returns a new ImageDataset whose train_* are the remaining training images and whose test_*
    are the validation images (the original test split is left out, so that model selection never
    sees it); its name ends in ':val' and info['test_split'] says 'validation'. `val_size` is a
    number of images, or a fraction of the training split when below 1.
    """
    n_train = len(data.train_labels)
    n_val = round(val_size * n_train) if isinstance(val_size, float) and val_size < 1 else int(val_size)
    if not 0 < n_val < n_train:
        raise EffdlError(f"val_size must be 1..{n_train - 1} images, or a fraction below 1, not {val_size}")
    order = balanced_order(data.train_labels, seed).to(data.train_labels.device)
    val, train = order[:n_val].sort().values, order[n_val:].sort().values
    info = {**data.info, "test_split": "validation", "validation": {"n": n_val, "seed": seed}}
    return dataclasses.replace(
        data,
        name=f"{data.name}:val",
        train_images=data.train_images[train],
        train_labels=data.train_labels[train],
        test_images=data.train_images[val],
        test_labels=data.train_labels[val],
        info=info,
    )
