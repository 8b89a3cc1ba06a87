"""Accuracy measured on a whole split, with exact correct/total counts: PyTorch (optional flip TTA) or ONNX."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from effdl.data.loader import BatchLoader


@dataclass(frozen=True)
class Accuracy:
    correct: int
    total: int
    loss: float

    @property
    def top1(self) -> float:
        """Fraction of correct predictions, in [0, 1]."""
        return self.correct / max(self.total, 1)


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader, *, tta: bool = False, autocast: bool = False) -> Accuracy:
    """Top-1 accuracy and mean loss of `model` over every example `loader` yields.

    `tta` averages the logits of each image and its horizontal mirror.
    """
    was_training = model.training
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    device_type = loader.device.type
    for images, labels in loader:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(images)
            if tta:
                logits = (logits + model(images.flip(3))) / 2
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(1) == labels).sum())
        total += labels.numel()
    model.train(was_training)
    return Accuracy(correct, total, loss_sum / max(total, 1))


def evaluate_onnx(path: str | Path, loader: BatchLoader, *, threads: int | None = None) -> Accuracy:
    """Top-1 accuracy and mean loss of an exported ONNX model, run in ONNX Runtime on the CPU.

    The same loader as for `evaluate`, so an export's accuracy is compared on identical inputs.
    """
    from effdl.deploy.onnx import ort_session

    session = ort_session(path, threads=threads)
    input_name = session.get_inputs()[0].name
    correct, total, loss_sum = 0, 0, 0.0
    for images, labels in loader:
        batch = images.float().contiguous().cpu().numpy()
        logits = torch.from_numpy(session.run(None, {input_name: batch})[0]).float()
        labels = labels.cpu()
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(1) == labels).sum())
        total += labels.numel()
    return Accuracy(correct, total, loss_sum / max(total, 1))
