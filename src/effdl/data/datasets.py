"""Datasets by name, decoded once into uint8 tensors held whole in memory.

`load_dataset(name)` returns an `ImageDataset`: train and test images as uint8 NCHW tensors,
integer labels, class names and the normalisation constants. Names:
- `synthetic`: a small learnable random dataset for tests (class-dependent templates + noise).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from effdl.errors import unknown_name_error

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


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


def load_dataset(name: str, root: str | None = None) -> ImageDataset:
    """Load dataset `name` (see module docstring) from `root` or the default data location."""
    if name == "synthetic":
        return synthetic_dataset()
    raise unknown_name_error("dataset", name, ["synthetic", "cifar10", "cifar100", "imagefolder:PATH"])
