"""Data: datasets decoded once into in-memory uint8 tensors, batched and augmented on the device."""

from effdl.data.augment import AugmentConfig
from effdl.data.datasets import ImageDataset, default_data_root, load_dataset
from effdl.data.loader import BatchLoader
from effdl.data.preview import save_augmentation_grid
from effdl.data.splits import limited, subset, train_val_split

__all__ = [
    "AugmentConfig",
    "BatchLoader",
    "ImageDataset",
    "default_data_root",
    "limited",
    "load_dataset",
    "save_augmentation_grid",
    "subset",
    "train_val_split",
]
