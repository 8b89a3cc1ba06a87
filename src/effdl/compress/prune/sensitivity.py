"""Per-layer pruning sensitivity: accuracy as each layer alone is magnitude-pruned to s.

`sensitivity_scan` prunes one layer at a time (the others stay dense), measures accuracy with a
user-given function, and restores the layer. `SensitivityScan.layer_targets(max_drop)` turns the
result into per-layer sparsity targets (the largest scanned sparsity whose accuracy stays within
`max_drop` of the dense model), which `prune_magnitude` accepts as a mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from effdl.compress.prune.selection import check_fraction, prunable_layers
from effdl.compress.prune.unstructured import prune_magnitude

DEFAULT_SPARSITIES = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


@dataclass
class SensitivityScan:
    """Accuracy of the dense model and of each layer pruned alone to each sparsity."""

    baseline: float
    sparsities: list[float]
    accuracy: dict[str, list[float]] = field(default_factory=dict)  # layer -> accuracy per sparsity

    def layer_targets(self, max_drop: float) -> dict[str, float]:
        """Per layer, the largest scanned sparsity losing at most `max_drop` accuracy (0 if none)."""
        targets = {}
        for layer, accs in self.accuracy.items():
            ok = [s for s, a in zip(self.sparsities, accs) if a >= self.baseline - max_drop]
            targets[layer] = max(ok, default=0.0)
        return targets

    def table(self):
        """A rich Table: one row per layer, one column per sparsity."""
        from rich.table import Table

        table = Table(title=f"pruning sensitivity (dense accuracy {self.baseline:.2%})")
        table.add_column("layer")
        for s in self.sparsities:
            table.add_column(f"{s:.0%}", justify="right")
        for layer, accs in self.accuracy.items():
            table.add_row(layer, *(f"{a:.2%}" for a in accs))
        return table

    def plot(self, path: str | Path) -> Path:
        """Save accuracy-vs-sparsity curves, one per layer, to `path` (PNG/SVG/PDF)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 5))
        for layer, accs in self.accuracy.items():
            ax.plot(self.sparsities, accs, marker="o", label=layer)
        ax.axhline(self.baseline, color="black", linestyle="--", label="dense")
        ax.set_xlabel("sparsity of the layer")
        ax.set_ylabel("accuracy")
        ax.set_title("per-layer pruning sensitivity")
        if len(self.accuracy) <= 20:
            ax.legend(fontsize="x-small", ncol=2)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        return path

    def to_json(self) -> dict:
        return {"baseline": self.baseline, "sparsities": self.sparsities, "accuracy": self.accuracy}


@torch.no_grad()
def sensitivity_scan(
    model: nn.Module,
    accuracy: Callable[[nn.Module], float],
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> SensitivityScan:
    """Scan every selected layer at every sparsity; `model` is left exactly as it was."""
    sparsities = sorted(check_fraction(s) for s in sparsities)
    layers = prunable_layers(model, include, exclude)
    scan = SensitivityScan(baseline=float(accuracy(model)), sparsities=sparsities)
    for name, layer in layers.items():
        original = layer.weight.detach().clone()
        results = []
        for s in sparsities:
            prune_magnitude(model, s, scope="layer", include=[name])
            results.append(float(accuracy(model)))
            layer.weight.copy_(original)
        scan.accuracy[name] = results
    return scan
