"""Accuracy measured on a whole split, with exact correct/total counts: PyTorch (optional flip TTA) or ONNX.

A model is only ever measured on data with its own classes: `check_model_fits_data` (before
evaluating or fine-tuning on a dataset) and `evaluate` itself (on the first batch's logits) refuse
with one line naming both class counts, instead of a raw "Target 43 is out of bounds" or a
silently near-zero accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from effdl.core.modules import eval_mode
from effdl.data.datasets import ImageDataset
from effdl.data.loader import BatchLoader
from effdl.errors import EffdlError
from effdl.models.registry import data_meta, model_spec


@dataclass(frozen=True)
class Accuracy:
    correct: int
    total: int
    loss: float

    @property
    def top1(self) -> float:
        """Fraction of correct predictions, in [0, 1]."""
        return self.correct / max(self.total, 1)


def model_classes(model: nn.Module) -> tuple[int | None, list[str] | None]:
    """(number of classes, their names in label order) that `model` predicts, as far as it records them.

    Names come from the data record (`effdl.models.registry.data_meta`); the count from it, else from
    the architecture spec's `num_classes`; either is None when the model does not record it.
    """
    meta = data_meta(model) or {}
    names = meta.get("classes")
    if names:
        return len(names), list(names)
    count = ((model_spec(model) or {}).get("kwargs") or {}).get("num_classes")
    return (int(count) if count is not None else None), None


def _classes_error(model_count: int, data_count: int, data_name: str, trained_on: str | None) -> EffdlError:
    source = f" (trained on {trained_on})" if trained_on else ""
    return EffdlError(
        f"the model predicts {model_count} classes{source} but {data_name} has {data_count}: "
        "evaluate or fine-tune it on data with the same classes"
    )


def check_model_fits_data(model: nn.Module, data: ImageDataset) -> None:
    """Refuse (EffdlError, one line) to measure or fine-tune `model` on `data` with other classes.

    Checks the class count and, when both the model and the data name their classes, the names in
    label order (a model whose label 3 is "cat" gives meaningless answers where 3 means "dog").
    A model that records no classes is not refused here; `evaluate` still checks its logits.
    """
    count, names = model_classes(model)
    trained_on = (data_meta(model) or {}).get("dataset")
    if count is not None and count != data.num_classes:
        raise _classes_error(count, data.num_classes, data.name, trained_on)
    if names is not None and list(data.classes) != names:
        differ = [f"{i}: {a} vs {b}" for i, (a, b) in enumerate(zip(names, data.classes)) if a != b]
        raise EffdlError(
            f"the model's classes{f' (trained on {trained_on})' if trained_on else ''} are not {data.name}'s, "
            f"label by label ({', '.join(differ[:3])}{', ...' if len(differ) > 3 else ''}): "
            "evaluate or fine-tune it on data with the same classes"
        )


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader, *, tta: bool = False, autocast: bool = False) -> Accuracy:
    """Top-1 accuracy and mean loss of `model` over every example `loader` yields.

    `tta` averages the logits of each image and its horizontal mirror. Raises EffdlError if the
    model's logits do not have one entry per class of the loader (`loader.num_classes`).
    """
    with eval_mode(model):
        correct, total, loss_sum = 0, 0, 0.0
        device_type = loader.device.type
        for images, labels in loader:
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
                logits = model(images)
                if tta:
                    logits = (logits + model(images.flip(3))) / 2
            logits = logits.float()
            if total == 0 and logits.shape[1] != loader.num_classes:
                raise _classes_error(logits.shape[1], loader.num_classes, "the evaluation data",
                                     (data_meta(model) or {}).get("dataset"))
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += int((logits.argmax(1) == labels).sum())
            total += labels.numel()
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
        if total == 0 and logits.shape[1] != loader.num_classes:
            raise _classes_error(logits.shape[1], loader.num_classes, "the evaluation data", None)
        labels = labels.cpu()
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(1) == labels).sum())
        total += labels.numel()
    return Accuracy(correct, total, loss_sum / max(total, 1))
