"""Callbacks: how compression techniques hook into training without changing the trainer.

Subclass `Callback` and override what you need. The trainer calls every callback's hook in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from effdl.train.trainer import Trainer


class Callback:
    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first epoch (also after a resume)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Before each epoch; may change trainer.model (call trainer.rebuild_optimizer() after)."""

    def extra_loss(
        self, trainer: Trainer, images: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor
    ) -> torch.Tensor | None:
        """A term added to the loss of this batch (distillation, sparsity penalties...)."""
        return None

    def on_after_step(self, trainer: Trainer) -> None:
        """After each optimizer step (re-apply pruning masks, clip weights...)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        """After each epoch's evaluation; may add entries to `metrics` before they are logged."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last epoch, before the final evaluation and summary."""
