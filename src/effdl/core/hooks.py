"""The training-hook protocol: how techniques take part in training without knowing the trainer.

Subclass `Callback` and override what you need; the trainer calls every callback's hook in order
and hands it a `TrainingState` (the trainer's public surface). Two capabilities reach further:

- `Callback.parameters()`: trainable tensors the hook owns (a feature regressor, a learned scale);
  the trainer optimises them as a param group of their own, next to the model's.
- `FeatureTap(model, ["layers.1", "fc"])`: the outputs of modules by path during a forward pass,
  for a student or a teacher, through forward hooks that are removed when the tap closes.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, Protocol

import torch
from torch import nn

from effdl.errors import EffdlError


class TrainingState(Protocol):
    """What a hook may read from (or, for `model`, change in) the trainer that calls it."""

    model: nn.Module  # the model being trained (a callback may replace it in on_epoch_start)
    device: torch.device
    config: Any  # the run's TrainConfig (epochs, lr, compile...)
    epoch: int  # the epoch in progress, 0-based
    step: int  # optimizer steps taken so far
    steps_per_epoch: int
    total_steps: int
    bf16: bool  # whether the forward pass runs under bfloat16 autocast
    channels_last: bool
    optimizer: torch.optim.Optimizer
    history: list[dict[str, Any]]  # each finished epoch's logged metrics

    def rebuild_optimizer(self) -> None:
        """Rebuild the optimizer (and EMA) after the model's parameters changed."""


class Callback:
    """A training hook: every method is optional and does nothing by default."""

    def parameters(self) -> Iterable[nn.Parameter]:
        """Extra trainable tensors this hook owns (requires_grad=True), optimised with the model
        in a param group of their own (same learning-rate schedule; weight decay as the config sets
        it for the model's tensors of the same rank). The trainer moves them to its device in place,
        so references the hook holds stay valid. Asked again whenever the optimizer is rebuilt."""
        return ()

    def on_train_start(self, trainer: TrainingState) -> None:
        """Before the first epoch (also after a resume)."""

    def on_epoch_start(self, trainer: TrainingState, epoch: int) -> None:
        """Before each epoch; may change trainer.model (call trainer.rebuild_optimizer() after)."""

    def extra_loss(
        self, trainer: TrainingState, images: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
        loss: torch.Tensor,
    ) -> torch.Tensor | None:
        """A term added to the loss of this batch (distillation, sparsity penalties...)."""
        return None

    def on_after_step(self, trainer: TrainingState) -> None:
        """After each optimizer step (re-apply pruning masks, clip weights...)."""

    def on_epoch_end(self, trainer: TrainingState, epoch: int, metrics: dict[str, Any]) -> None:
        """After each epoch's evaluation; may add entries to `metrics` before they are logged."""

    def on_train_end(self, trainer: TrainingState) -> None:
        """After the last epoch, before the final evaluation and summary."""


class FeatureTap:
    """The outputs of `model`'s submodules at `paths` (names from `named_modules()`), captured by
    forward hooks while the tap is open:

        with FeatureTap(teacher, ["layers.1", "fc"]) as features:
            teacher(images)
        features["layers.1"]  # that module's output, e.g. a [N, C, H, W] tensor

    Outputs are kept as the module returned them (a tensor, or a tuple/dict for modules returning
    several), attached to the autograd graph unless `detach=True`, so a loss on a student's features
    trains the student. Each forward pass overwrites the previous values; a module called several
    times in one pass (shared weights) keeps its last call's output. The hooks are removed when the
    `with` block ends (or on `close()`), whatever happens inside it.

    Raises EffdlError naming any path that is not a submodule of `model`, with the closest names.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str], *, detach: bool = False):
        self.paths = list(paths)
        if not self.paths:
            raise EffdlError("FeatureTap needs at least one module path")
        modules = dict(model.named_modules())
        missing = [p for p in self.paths if p not in modules]
        if missing:
            close = difflib.get_close_matches(missing[0], [n for n in modules if n], n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise EffdlError(f"{type(model).__name__} has no module '{missing[0]}' to tap{hint}")
        self.detach = detach
        self.features: dict[str, Any] = {}
        self._modules = [(p, modules[p]) for p in self.paths]
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, path: str):
        def keep(module: nn.Module, inputs: Any, output: Any) -> None:  # returns None: output unchanged
            self.features[path] = _detached(output) if self.detach else output

        return keep

    def open(self) -> dict[str, Any]:
        """Register the hooks (idempotent) and return the dict the outputs are written to."""
        if not self._handles:
            self._handles = [m.register_forward_hook(self._hook(p)) for p, m in self._modules]
        return self.features

    def close(self) -> None:
        """Remove the hooks; the captured outputs stay in `features`."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> dict[str, Any]:
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(_detached(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value
