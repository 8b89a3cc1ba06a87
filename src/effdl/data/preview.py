"""Image grids of augmented training batches, to see what the model sees."""

from __future__ import annotations

from pathlib import Path

import torchvision.utils

from effdl.data.augment import AugmentConfig
from effdl.data.datasets import ImageDataset
from effdl.data.loader import BatchLoader


def save_augmentation_grid(
    source: BatchLoader | ImageDataset,
    path: str | Path,
    n: int = 64,
    *,
    augment: AugmentConfig | None = None,
    nrow: int = 8,
    seed: int = 0,
) -> Path:
    """Write a PNG grid of `n` augmented training images (mixed and erased as trained on, un-normalised).

    `source` is a dataset (its train split is augmented with `augment`, default AugmentConfig())
    or a loader (its images, augmentation and current epoch are used; the loader itself is not
    advanced). Returns the path written.
    """
    if isinstance(source, ImageDataset):
        images, labels = source.train_images, source.train_labels
        mean, std, num_classes, device, epoch = source.mean, source.std, source.num_classes, "cpu", 0
    else:
        images, labels = source.images, source.labels
        mean, std = source.mean.flatten().div(255).tolist(), source.std.flatten().div(255).tolist()
        num_classes, device, epoch = source.num_classes, source.device, source.epoch
        augment = augment or source.augment
    loader = BatchLoader(
        images, labels, mean=mean, std=std, batch_size=min(n, len(labels)), train=True, augment=augment,
        num_classes=num_classes, device=device, seed=seed,
    )  # fmt: skip
    loader.set_epoch(epoch)
    batch, _ = next(iter(loader))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image(loader.denormalize(batch), path, nrow=nrow)
    return path
