"""Straight-through estimators: rounding and sign whose backward pass lets the gradient through."""

from __future__ import annotations

import torch


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """+1 / -1 forward (0 maps to +1 so only two values exist), identity backward."""
    return x + (torch.where(x >= 0, 1.0, -1.0).to(x.dtype) - x).detach()


def sign_hardtanh_ste(x: torch.Tensor) -> torch.Tensor:
    """+1 / -1 forward; backward passes the gradient only where |x| <= 1 (BNN activations)."""
    clipped = x.clamp(-1, 1)
    return clipped + (torch.where(x >= 0, 1.0, -1.0).to(x.dtype) - clipped).detach()


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """x forward, gradient multiplied by `factor` backward (LSQ's step-size gradient scale)."""
    return x * factor + (x - x * factor).detach()
