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


def evaluated_on(test_limit: int | None, total: int) -> str:
    """How summaries name the split an accuracy was measured on: "test", or "test (balanced subset
    of N)" (the report marks subsets and keeps them off the Pareto front)."""
    return "test" if not test_limit else f"test (balanced subset of {total})"  # 0: no limit, as in loading


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


def _refuse_non_finite(logits: torch.Tensor, model: nn.Module | None) -> None:
    """EffdlError when any logit is NaN or infinite: argmax would then pick class 0 for those images
    and the "accuracy" would be that class's share, not the model's. Names a non-finite weight of
    `model` where there is one (a diverged or damaged checkpoint)."""
    bad = ~torch.isfinite(logits).all(1)
    if not bad.any():
        return
    weight = next((name for name, t in (model.state_dict().items() if model is not None else ())
                   if t.is_floating_point() and not torch.isfinite(t).all()), None)
    cause = (f"its weight {weight} holds NaN or inf" if weight else "an activation overflows" if model is not None
             else "a weight or an activation of the graph is not finite")
    raise EffdlError(f"the model's outputs are NaN or infinite for {int(bad.sum())} of {len(bad)} images in a batch "
                     f"({cause}); no accuracy can be measured from them")


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader, *, tta: bool = False, autocast: bool = False) -> Accuracy:
    """Top-1 accuracy and mean loss of `model` over every example `loader` yields.

    `tta` averages the logits of each image and its horizontal mirror. Raises EffdlError if the
    model's logits do not have one entry per class of the loader (`loader.num_classes`), or if any
    is NaN or infinite (an accuracy read from them would be class 0's share).
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
            _refuse_non_finite(logits, model)
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
        _refuse_non_finite(logits, None)
        labels = labels.cpu()
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(1) == labels).sum())
        total += labels.numel()
    return Accuracy(correct, total, loss_sum / max(total, 1))
