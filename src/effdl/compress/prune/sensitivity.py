"""Per-layer pruning sensitivity: accuracy as each layer alone is magnitude-pruned to s.

`sensitivity_scan` prunes one layer at a time (the others stay dense), measures accuracy with a
user-given function, and restores the layer. The result is the `SensitivityScan` every technique
returns (effdl.measure.sensitivity: drops in percentage points); its `layer_targets` turns it into
per-layer sparsity targets (the largest scanned sparsity within the allowed drop of the dense
model), which `prune_magnitude` accepts as a mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from effdl.compress.prune.selection import check_fraction, prunable_layers
from effdl.compress.prune.unstructured import prune_magnitude
from effdl.measure.sensitivity import SensitivityScan

DEFAULT_SPARSITIES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)

__all__ = ["DEFAULT_SPARSITIES", "SensitivityScan", "sensitivity_scan"]


@torch.no_grad()
def sensitivity_scan(
    model: nn.Module,
    accuracy: Callable[[nn.Module], float],
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> SensitivityScan:
    """Scan every selected layer at every sparsity; `model` is left exactly as it was.

    accuracy(model) -> top-1 in [0, 1]. Returns a SensitivityScan with setting "sparsity".
    """
    sparsities = sorted(check_fraction(s) for s in sparsities)
    layers = prunable_layers(model, include, exclude)
    baseline = float(accuracy(model))
    accuracies: dict[str, dict[float, float]] = {}
    for name, layer in layers.items():
        original = layer.weight.detach().clone()
        accuracies[name] = {}
        for s in sparsities:
            prune_magnitude(model, s, scope="layer", include=[name])
            accuracies[name][s] = float(accuracy(model))
            layer.weight.copy_(original)
    return SensitivityScan.from_accuracies(baseline, "sparsity", "pruning", accuracies)
