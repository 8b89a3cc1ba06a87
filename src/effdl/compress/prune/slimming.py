"""Network slimming's sparsity training (Liu et al. 2017): an L1 penalty on BatchNorm scales.

Trained with this penalty, unimportant channels get |gamma| near zero, so pruning by BN scale
(`prune_channels(..., criterion="bn-scale")`) then removes them with little accuracy loss.
"""

from __future__ import annotations

import torch
from torch import nn

from effdl.core.hooks import Callback
from effdl.errors import EffdlError


def bn_scale_l1(model: nn.Module) -> torch.Tensor:
    """Sum of |gamma| over every affine BatchNorm layer of `model`."""
    scales = [m.weight.abs().sum() for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
    if not scales:
        raise EffdlError("network slimming needs BatchNorm layers with learnable scales; the model has none")
    return torch.stack(scales).sum()


class SlimmingPenalty(Callback):
    """Adds `strength * sum |gamma|` to the training loss (the paper uses 1e-4 to 1e-5)."""

    def __init__(self, strength: float = 1e-4):
        if strength < 0:
            raise EffdlError(f"slimming penalty must be >= 0, got {strength}")
        self.strength = strength

    def extra_loss(self, trainer, images, targets, logits, loss) -> torch.Tensor | None:
        return self.strength * bn_scale_l1(trainer.model) if self.strength else None
