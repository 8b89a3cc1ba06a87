"""Image grids of augmented training batches, to see what the model sees.

The grid is a matplotlib figure: each image drawn large with nearest-neighbour upscaling (pixels
stay visible, nothing is smoothed in), its class name above it (the two classes and their weights
for a mixed image), and a title naming the augmentation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from effdl.data.augment_config import AugmentConfig
from effdl.data.datasets import ImageDataset
from effdl.data.loader import BatchLoader

TILE_INCHES = 1.25  # per image: room for a 32-pixel image at about 4x, and its label
DPI = 100


def describe_augment(augment: AugmentConfig, epoch: int = 0) -> str:
    """A short human description of what `augment` does at `epoch`, e.g. "random crop (pad 4), flip, cutout 8"."""
    parts = []
    if augment.crop_padding:
        parts.append(f"random crop (pad {augment.crop_padding})")
    if augment.flip:
        parts.append("flip")
    if augment.auto_augment != "none":
        parts.append(augment.auto_augment)
    if augment.cutout:
        parts.append(f"cutout {augment.cutout}")
    mixing = augment.mixes and (augment.mix_until_epoch is None or epoch < augment.mix_until_epoch)
    if mixing:
        mixes = [f"{kind} α={alpha:g}" for kind, alpha in (("mixup", augment.mixup_alpha), ("cutmix", augment.cutmix_alpha))
                 if alpha > 0]  # fmt: skip
        chance = f" (p={augment.mix_prob:g})" if augment.mix_prob < 1 else ""
        parts.append(" or ".join(mixes) + chance)
    return ", ".join(parts) or "no augmentation"


def _label(target: torch.Tensor, classes: list[str]) -> str:
    """The class name of an int label, or the two heaviest classes of a mixed (soft) target."""
    if target.dim() == 0:
        return classes[int(target)]
    weights, indices = target.float().topk(min(2, target.numel()))
    if weights[0] > 0.995:
        return classes[int(indices[0])]
    return "\n".join(f"{classes[int(i)]} {float(w):.2f}" for w, i in zip(weights, indices) if w > 0.005)


def save_augmentation_grid(
    source: BatchLoader | ImageDataset,
    path: str | Path,
    n: int = 64,
    *,
    augment: AugmentConfig | None = None,
    nrow: int = 8,
    seed: int = 0,
    classes: list[str] | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG grid of `n` augmented training images (mixed and erased as trained on, un-normalised).

    `source` is a dataset (its train split is augmented with `augment`, default AugmentConfig())
    or a loader (its images, augmentation and current epoch are used; the loader itself is not
    advanced). Images are laid out `nrow` per row, upscaled nearest-neighbour, each titled with
    its class (`classes`: names by label; default the dataset's, else "class N"); the figure's
    title is `title`, default the dataset name and `describe_augment`. Returns the path written.
    """
    if isinstance(source, ImageDataset):
        images, labels = source.train_images, source.train_labels
        mean, std, num_classes, device, epoch = source.mean, source.std, source.num_classes, "cpu", 0
        classes = classes or source.classes
        name = source.name
        augment = augment or AugmentConfig()
    else:
        images, labels = source.images, source.labels
        mean, std = source.mean.flatten().div(255).tolist(), source.std.flatten().div(255).tolist()
        num_classes, device, epoch = source.num_classes, source.device, source.epoch
        augment = augment or source.augment
        name = None
    classes = classes or [f"class {i}" for i in range(num_classes)]
    loader = BatchLoader(
        images, labels, mean=mean, std=std, batch_size=min(n, len(labels)), train=True, augment=augment,
        num_classes=num_classes, device=device, seed=seed,
    )  # fmt: skip
    loader.set_epoch(epoch)
    batch, targets = next(iter(loader))
    pictures = loader.denormalize(batch).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()  # NHWC in [0, 1]
    targets = targets.cpu()

    count = len(pictures)
    cols = min(nrow, count)
    rows = -(-count // cols)
    height, width = pictures.shape[1:3]
    aspect = height / width
    label_lines = 2 if targets.dim() > 1 else 1  # mixed images name two classes
    row_inches = TILE_INCHES * aspect + 0.14 * label_lines + 0.05
    # constrained layout keeps labels and the title clear of the images
    figure = Figure(figsize=(cols * TILE_INCHES, rows * row_inches + 0.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if index < count:
            ax.imshow(pictures[index], interpolation="nearest")
            ax.set_title(_label(targets[index], classes), fontsize=7, pad=2)
    heading = title or " — ".join(part for part in (name, describe_augment(augment, epoch)) if part)
    figure.suptitle(f"{heading}\n{count} training images, {height}x{width}, as the model sees them", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path
