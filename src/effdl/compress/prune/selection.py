"""Which layers a pruning step may touch, and validation of the amounts users ask for.

Layers are named as in `model.named_modules()`; patterns are shell-style globs (`layers.0.*`).
Every check here runs before any weight changes, so bad input never leaves a half-pruned model.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from torch import nn

from effdl.errors import EffdlError

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)


def check_fraction(value: float, what: str = "sparsity") -> float:
    """`value` as a float in [0, 1), else an EffdlError naming `what`."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise EffdlError(f"{what} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= value < 1.0:
        raise EffdlError(f"{what} must be in [0, 1) (a fraction of weights to remove), got {value}")
    return value


def matching(names: Iterable[str], patterns: Iterable[str], what: str = "layer pattern") -> set[str]:
    """The names matching any pattern; every pattern must match at least one name."""
    names = list(names)
    chosen: set[str] = set()
    for pattern in patterns:
        hits = {n for n in names if fnmatch.fnmatchcase(n, pattern)}
        if not hits:
            raise EffdlError(f"{what} '{pattern}' matches no prunable layer; layers: {', '.join(names[:12])}...")
        chosen |= hits
    return chosen


def prunable_layers(
    model: nn.Module, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None
) -> dict[str, nn.Module]:
    """Conv and Linear layers of `model` by name, restricted to `include` and minus `exclude` globs."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    if not layers:
        raise EffdlError("the model has no Conv or Linear layer to prune")
    include, exclude = list(include or []), list(exclude or [])
    keep = matching(layers, include) if include else set(layers)
    keep -= matching(layers, exclude) if exclude else set()
    if not keep:
        raise EffdlError("the layer patterns leave no layer to prune")
    return {name: m for name, m in layers.items() if name in keep}
