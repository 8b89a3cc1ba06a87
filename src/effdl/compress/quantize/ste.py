"""Straight-through estimators: rounding and sign whose backward pass lets the gradient through.

Each returns `value.detach() + (g - g.detach())`: the added term is exactly zero, so the forward
value is bit-exact (a quantized tensor keeps exactly its grid values), while the gradient is g's.
"""

from __future__ import annotations

import torch


def passthrough(value: torch.Tensor, gradient_source: torch.Tensor) -> torch.Tensor:
    """`value` forward (bit-exact), the gradient of `gradient_source` backward."""
    return value.detach() + (gradient_source - gradient_source.detach())


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward."""
    return passthrough(torch.round(x), x)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """+1 / -1 forward (0 maps to +1 so only two values exist), identity backward."""
    return passthrough(torch.where(x >= 0, 1.0, -1.0).to(x.dtype), x)


def sign_hardtanh_ste(x: torch.Tensor) -> torch.Tensor:
    """+1 / -1 forward; backward passes the gradient only where |x| <= 1 (BNN activations)."""
    return passthrough(torch.where(x >= 0, 1.0, -1.0).to(x.dtype), x.clamp(-1, 1))


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """x forward, gradient multiplied by `factor` backward (LSQ's step-size gradient scale)."""
    return passthrough(x, x * factor)
