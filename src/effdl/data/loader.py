"""Batches from an in-memory uint8 tensor, augmented on the device: no per-image Python.

`BatchLoader` shuffles indices, gathers a batch of uint8 images on the device, applies the
pixel augmentations (crop, flip, auto-augment) as batched tensor ops, converts to float and
normalises, then erases (Cutout) and mixes (mixup / CutMix, per batch, until `mix_until_epoch`),
and (optionally) switches to channels_last. It yields `(images, targets)`: targets are int64 labels, or float class
probabilities [B, num_classes] when a batch was mixed (mixup / CutMix); `F.cross_entropy`
accepts both.

Data-parallel training (`shard=(rank, world_size)`): each process keeps only its shard of the split
on its device. A training shard is a seeded, class-mixed stride of the images (every shard has
n // world_size of them, so every process takes the same number of steps; at most world_size - 1
images sit out), shuffled within itself each epoch; each process's augmentation draws are seeded by
(seed, rank, epoch), so a resumed run draws exactly what the uninterrupted one would. An evaluation
shard is a contiguous block, and the shards together hold every image once.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from effdl.data.augment import (
    AugmentConfig,
    auto_augment,
    auto_augment_transform,
    cutmix,
    cutout,
    mixup,
    random_crop,
    random_flip,
)
from effdl.data.datasets import ImageDataset
from effdl.errors import unknown_name_error

__all__ = ["AugmentConfig", "BatchLoader", "shard_positions"]


def shard_positions(n: int, rank: int, world_size: int, *, train: bool, seed: int = 0) -> torch.Tensor:
    """The indices (int64, CPU) of process `rank`'s shard of `n` images among `world_size`.

    Training: a seeded permutation taken with stride `world_size` (classes mix even when the split
    is sorted by class), cut to n // world_size so every shard has the same length. Evaluation:
    contiguous blocks (torch.tensor_split) that cover all n exactly once.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    if not train:
        return torch.tensor_split(torch.arange(n), world_size)[rank]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[rank::world_size][: n // world_size]


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """A 63-bit seed for process `rank`'s draws in `epoch`: a pure function of the three."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


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
        shard: tuple[int, int] | None = None,
    ):
        """`batch_size` is this loader's (per process, with `shard`). `shard=(rank, world_size)`:
        keep only that process's shard of the images (see the module docstring)."""
        self.device = torch.device(device)
        self.shard = shard if shard is not None and shard[1] > 1 else None
        self.seed = seed
        if self.shard is not None:
            positions = shard_positions(len(labels), *self.shard, train=train, seed=seed)
            images, labels = images[positions.to(images.device)], labels[positions.to(labels.device)]
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
        self.generator = torch.Generator(device=self.device).manual_seed(seed)  # per-image draws
        self.rng = np.random.default_rng(seed)  # per-batch draws: whether and how to mix, policy seeds
        self.auto_augment = auto_augment_transform(self.augment.auto_augment)
        self.epoch = 0

    @classmethod
    def for_split(cls, data: ImageDataset, split: str, **kwargs) -> BatchLoader:
        """A loader over the 'train' or 'test' split of `data`; `kwargs` go to the constructor."""
        if split not in ("train", "test"):
            raise unknown_name_error("split", split, ["train", "test"])
        images = data.train_images if split == "train" else data.test_images
        labels = data.train_labels if split == "train" else data.test_labels
        return cls(images, labels, mean=data.mean, std=data.std, num_classes=data.num_classes, **kwargs)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Tell the loader which epoch comes next (mixing stops at `mix_until_epoch`); a training
        shard's random draws restart from the seed of (seed, rank, epoch)."""
        self.epoch = epoch
        if self.shard is not None and self.train:
            seed = epoch_seed(self.seed, self.shard[0], epoch)
            self.generator.manual_seed(seed)
            self.rng = np.random.default_rng(seed)

    @property
    def mixing(self) -> bool:
        """Whether this epoch's training batches may be mixed (mixup / CutMix)."""
        until = self.augment.mix_until_epoch
        return self.augment.mixes and (until is None or self.epoch < until)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images to normalised float32 (NCHW-contiguous)."""
        return images.float().sub_(self.mean).div_(self.std)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images back to pixel values in [0, 1]."""
        return (x * self.std + self.mean).div_(255)

    def augment_batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training transform of one uint8 batch: normalised float images and their targets.

        Targets are the int64 labels, or float class probabilities [B, num_classes] if the batch
        was mixed.
        """
        aug = self.augment
        if aug.crop_padding:
            images = random_crop(images, aug.crop_padding, self.generator)
        if aug.flip:
            images = random_flip(images, self.generator)
        if self.auto_augment is not None:
            seed = int(self.rng.integers(2**63))
            images = auto_augment(images, self.auto_augment, aug.auto_augment_chunk, seed)
        x = self.normalize(images)
        if aug.cutout:
            cutout(x, aug.cutout, self.generator)
        if self.mixing and self.rng.random() < aug.mix_prob:
            use_cutmix = aug.cutmix_alpha > 0 and (aug.mixup_alpha == 0 or self.rng.random() < 0.5)
            alpha = aug.cutmix_alpha if use_cutmix else aug.mixup_alpha
            lam = float(self.rng.beta(alpha, alpha))
            soft = torch.nn.functional.one_hot(labels, self.num_classes).float()
            return cutmix(x, soft, lam, self.generator) if use_cutmix else mixup(x, soft, lam)
        return x, labels

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.train:
            order = torch.randperm(n, device=self.device, generator=self.generator)
        else:
            order = torch.arange(n, device=self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            images, targets = self.images.index_select(0, idx), self.labels[idx]  # faster than [idx]
            if self.train:
                x, targets = self.augment_batch(images, targets)
            else:
                x = self.normalize(images)
            yield (x.contiguous(memory_format=torch.channels_last) if self.channels_last else x), targets
