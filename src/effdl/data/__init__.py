"""Data: datasets decoded once into in-memory uint8 tensors, batched and augmented on the device."""

from typing import TYPE_CHECKING

from effdl.lazy import lazy_exports

# Imported on first use (effdl.lazy): AugmentConfig alone needs no torch, for `effdl train --help`.
_EXPORTS = {
    "AugmentConfig": "effdl.data.augment_config",
    "BatchLoader": "effdl.data.loader",
    "ImageDataset": "effdl.data.datasets",
    "default_data_root": "effdl.data.datasets",
    "RESIZE_POLICIES": "effdl.data.imagefolder",
    "checked_image_size": "effdl.data.imagefolder",
    "limit_indices": "effdl.data.splits",
    "limited": "effdl.data.splits",
    "load_dataset": "effdl.data.datasets",
    "load_dataset_for": "effdl.data.datasets",
    "resize_image": "effdl.data.imagefolder",
    "save_augmentation_grid": "effdl.data.preview",
    "subset": "effdl.data.splits",
    "train_val_split": "effdl.data.splits",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from effdl.data.augment_config import AugmentConfig
    from effdl.data.datasets import ImageDataset, default_data_root, load_dataset, load_dataset_for
    from effdl.data.imagefolder import RESIZE_POLICIES, checked_image_size, resize_image
    from effdl.data.loader import BatchLoader
    from effdl.data.preview import save_augmentation_grid
    from effdl.data.splits import limit_indices, limited, subset, train_val_split
