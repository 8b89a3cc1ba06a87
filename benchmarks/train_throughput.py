"""Training throughput: effdl's in-memory on-device pipeline vs a plain torchvision DataLoader loop.

Both train the same resnet20 on the same CIFAR-10 images for the same number of images, in this
run. The baseline is what a user writes by hand: torchvision ImageFolder + RandomCrop/Flip/
ToTensor/Normalize transforms, a DataLoader with worker processes, an fp32 eager loop. effdl is
timed with its defaults (after the same few untimed warm-up steps as the baseline) (bf16 autocast where the CPU has AMX, channels_last) and also in plain fp32
so the gain of the pipeline alone is visible.

    EFFDL_DATA=../shared/data python benchmarks/train_throughput.py --images 10240
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torchvision.transforms as T
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder

from common import write_result
from effdl.data import load_dataset, subset
from effdl.data.datasets import CIFAR10_MEAN, CIFAR10_STD
from effdl.models import create_model
from effdl.train import Trainer, make_config

WARMUP_STEPS = 5  # untimed steps before each measurement, for both pipelines


def baseline_images_per_s(folder: Path, n_images: int, batch_size: int, workers: int) -> float:
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    dataset = ImageFolder(str(folder / "train"), transform=transform)
    subset = Subset(dataset, torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:n_images].tolist())
    loader = DataLoader(subset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=False)
    model = create_model("resnet20")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model.train()

    def step(images, labels):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i, (images, labels) in enumerate(loader):  # warm-up: kernel selection, worker start-up
        step(images, labels)
        if i + 1 == WARMUP_STEPS:
            break
    start, seen = time.perf_counter(), 0
    for images, labels in loader:
        step(images, labels)
        seen += len(labels)
    return seen / (time.perf_counter() - start)


def effdl_images_per_s(data, n_images: int, batch_size: int, **overrides) -> float:
    config = make_config({"dataset": "cifar10", "epochs": 1, "batch_size": batch_size, "lr": 0.05,
                          "progress": False, **overrides})
    # Warm-up on a few batches first (oneDNN picks kernels per shape: the first bf16 steps take seconds).
    warmup = Trainer(create_model("resnet20"), subset(data, n=WARMUP_STEPS * batch_size, seed=1), config)
    warmup.train_one_epoch(_NoProgress())
    trainer = Trainer(create_model("resnet20"), subset(data, n=n_images, seed=0), config)
    return trainer.train_one_epoch(_NoProgress())["images_per_s"]


class _NoProgress:
    def add_task(self, *a, **k): return 0
    def advance(self, *a, **k): pass
    def update(self, *a, **k): pass
    def remove_task(self, *a, **k): pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=10240, help="training images per measurement")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--data-root", default=os.environ.get("EFFDL_DATA", "../shared/data"))
    args = parser.parse_args()
    data = load_dataset("cifar10", root=args.data_root)
    folder = Path(data.info.get("source", Path(args.data_root) / "cifar10"))
    baseline = baseline_images_per_s(folder, args.images, args.batch_size, args.workers)
    effdl_fp32 = effdl_images_per_s(data, args.images, args.batch_size, bf16=False, channels_last=False)
    effdl_default = effdl_images_per_s(data, args.images, args.batch_size)
    write_result("train_throughput", {
        "command": f"python benchmarks/train_throughput.py --images {args.images} --batch-size {args.batch_size}",
        "model": "resnet20", "images": args.images, "batch_size": args.batch_size,
        "baseline_torchvision_dataloader_img_s": round(baseline, 1),
        "effdl_fp32_contiguous_img_s": round(effdl_fp32, 1),
        "effdl_default_img_s": round(effdl_default, 1),
        "ratio_effdl_fp32_vs_baseline": round(effdl_fp32 / baseline, 2),
        "ratio_effdl_default_vs_baseline": round(effdl_default / baseline, 2),
    })


if __name__ == "__main__":
    main()
