"""Which layers a pruning step may touch, and validation of the amounts users ask for.

Layers are named as in `model.named_modules()`; patterns are names or shell-style globs (`layers.0.*`),
chosen with `effdl.core.LayerSelection` like every technique's.
Every check here runs before any weight changes, so bad input never leaves a half-pruned model.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from effdl.core.selection import LayerSelection, match_patterns
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


def matching(names: Iterable[str], patterns: Iterable[str]) -> set[str]:
    """The names matching any pattern (names or globs); every pattern must match at least one name
    (`effdl.core.selection.match_patterns`), else EffdlError naming it."""
    return match_patterns(names, patterns, what="prunable layer")


def prunable_layers(
    model: nn.Module, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None
) -> dict[str, nn.Module]:
    """Conv and Linear layers of `model` by name, restricted to `include` and minus `exclude` globs
    (a `LayerSelection` over PRUNABLE_TYPES: every pattern must match a prunable layer)."""
    if not any(isinstance(m, PRUNABLE_TYPES) for m in model.modules()):
        raise EffdlError("the model has no Conv or Linear layer to prune")
    selection = LayerSelection(include=tuple(include or ()), exclude=tuple(exclude or ()), types=PRUNABLE_TYPES,
                               what="prunable layer")
    layers = selection.select(model)
    if not layers:
        raise EffdlError("the layer patterns leave no layer to prune")
    return layers
