"""Batches from an in-memory uint8 tensor, augmented on the device: no per-image Python.

`BatchLoader` shuffles indices, gathers a batch of uint8 images on the device, applies the
augmentations as batched tensor ops, converts to float, normalises and (optionally) switches to
channels_last. It yields `(images, targets)`: targets are int64 labels, or float class
probabilities [B, num_classes] when a batch was mixed (mixup / CutMix); `F.cross_entropy`
accepts both.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from pydantic import BaseModel, ConfigDict

from effdl.data.datasets import ImageDataset


class AugmentConfig(BaseModel):
    """Training-time augmentation. Evaluation batches are never augmented."""

    model_config = ConfigDict(extra="forbid")

    crop_padding: int = 4  # random crop after zero padding by this many pixels; 0 disables
    flip: bool = True  # random horizontal flip


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image random crop of a zero-padded batch, as one gather."""
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=images.device, generator=generator)
    dy = torch.randint(0, 2 * padding + 1, (n,), device=images.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=images.device)[None])  # [n, h]
    cols = (dx[:, None] + torch.arange(w, device=images.device)[None])  # [n, w]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chan = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


class BatchLoader:
    """Iterate over (images, targets) batches of one split, on `device`."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        batch_size: int = 128,
        train: bool = False,
        augment: AugmentConfig | None = None,
        num_classes: int | None = None,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
        drop_last: bool | None = None,
        seed: int = 0,
    ):
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = batch_size
        self.train = train
        self.augment = augment or AugmentConfig()
        self.num_classes = num_classes or int(labels.max()) + 1
        self.channels_last = channels_last
        self.drop_last = train if drop_last is None else drop_last
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1) * 255
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.epoch = 0

    @classmethod
    def for_split(cls, data: ImageDataset, split: str, **kwargs) -> BatchLoader:
        images = data.train_images if split == "train" else data.test_images
        labels = data.train_labels if split == "train" else data.test_labels
        return cls(images, labels, mean=data.mean, std=data.std, num_classes=data.num_classes, **kwargs)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def augment_batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        aug = self.augment
        if aug.crop_padding:
            images = random_crop(images, aug.crop_padding, self.generator)
        if aug.flip:
            images = random_flip(images, self.generator)
        return images, labels

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.train:
            order = torch.randperm(n, device=self.device, generator=self.generator)
        else:
            order = torch.arange(n, device=self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            images, targets = self.images[idx], self.labels[idx]
            if self.train:
                images, targets = self.augment_batch(images, targets)
            yield self.normalize(images), targets
