"""Data: datasets decoded once into in-memory uint8 tensors, batched and augmented on the device."""

from effdl.data.datasets import ImageDataset, load_dataset
from effdl.data.loader import AugmentConfig, BatchLoader

__all__ = ["AugmentConfig", "BatchLoader", "ImageDataset", "load_dataset"]
