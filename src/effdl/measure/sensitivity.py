"""Per-layer sensitivity scans: one result type for every technique that scans layer by layer.

A scan compresses one layer at a time (to a sparsity, to a bit-width...), measures top-1 accuracy,
and restores the layer. `SensitivityScan` holds the result whatever the technique: the baseline
accuracy, and per (layer, setting) the accuracy and its drop from the baseline in percentage points
(0..100; negative when compressing the layer helped). Pruning and quantization scans both return
it (effdl.compress.prune.sensitivity, effdl.compress.quantize.sensitivity).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from effdl.errors import EffdlError


@dataclass(frozen=True)
class LayerSensitivity:
    """Accuracy with one layer compressed at one setting."""

    layer: str  # name from named_modules()
    setting: float  # what the layer was compressed to: a sparsity fraction, a bit-width...
    accuracy: float  # top-1 in [0, 1] with only this layer compressed
    drop: float  # baseline minus `accuracy`, in percentage points (0..100)

    @property
    def bits(self) -> int:
        """The setting as a bit-width (quantization scans; kept for callers written before `setting`)."""
        return int(self.setting)


@dataclass
class SensitivityScan:
    """The result of a per-layer sensitivity scan.

    baseline: top-1 in [0, 1] of the uncompressed model. setting: what `LayerSensitivity.setting`
    measures ("sparsity", "bits"). technique: for titles ("pruning", "quantization"). points: one
    per (layer, setting), layers in network order.
    """

    baseline: float
    setting: str
    technique: str
    points: list[LayerSensitivity] = field(default_factory=list)

    @classmethod
    def from_accuracies(cls, baseline: float, setting: str, technique: str,
                        accuracies: dict[str, dict[float, float]]) -> SensitivityScan:
        """A scan from {layer: {setting: top-1 in [0, 1]}}; drops are computed in points."""
        points = [LayerSensitivity(layer, value, acc, 100 * (baseline - acc))
                  for layer, by_setting in accuracies.items() for value, acc in by_setting.items()]
        return cls(baseline, setting, technique, points)

    # -------------------------------------------------------------------------------- views

    def layers(self) -> list[str]:
        """The scanned layers, in network order."""
        return list(dict.fromkeys(p.layer for p in self.points))

    def settings(self) -> list[float]:
        """The scanned settings, ascending."""
        return sorted({p.setting for p in self.points})

    @property
    def accuracy(self) -> dict[str, list[float]]:
        """{layer: top-1 in [0, 1] per setting, in `settings()` order}."""
        return {layer: [p.accuracy for p in sorted(self._of(layer), key=lambda p: p.setting)]
                for layer in self.layers()}

    @property
    def sparsities(self) -> list[float]:
        """`settings()`, under the name pruning scans used before this type existed."""
        return self.settings()

    def drops(self) -> dict[str, list[float]]:
        """{layer: drop in points per setting, in `settings()` order}."""
        return {layer: [p.drop for p in sorted(self._of(layer), key=lambda p: p.setting)] for layer in self.layers()}

    def _of(self, layer: str) -> list[LayerSensitivity]:
        return [p for p in self.points if p.layer == layer]

    def __iter__(self) -> Iterator[Any]:
        """`baseline, points = scan`: the tuple quantization scans returned before this type."""
        return iter((self.baseline, self.points))

    def layer_targets(self, max_drop: float | None = None, *, max_drop_points: float | None = None) -> dict[str, float]:
        """Per layer, the largest setting whose accuracy stays within the allowed drop (0 if none).

        max_drop_points: the allowed drop in percentage points. max_drop: the same as a fraction of
        accuracy (0.01 = 1 point), as `effdl prune --sensitivity-drop` takes it. Pass exactly one.
        For pruning, the result is per-layer sparsities that `prune_magnitude` accepts.
        """
        if (max_drop is None) == (max_drop_points is None):
            raise EffdlError("pass exactly one of max_drop (a fraction) and max_drop_points")
        allowed = max_drop if max_drop is not None else max_drop_points / 100
        return {layer: max((p.setting for p in self._of(layer) if p.accuracy >= self.baseline - allowed), default=0.0)
                for layer in self.layers()}

    # ------------------------------------------------------------------------------ outputs

    def table(self):
        """A rich Table: one row per layer, one column per setting, accuracy % and drop in points."""
        from rich.table import Table

        table = Table(title=f"{self.technique} sensitivity (baseline {100 * self.baseline:.2f}%, "
                            "accuracy % and drop in points)")
        table.add_column("layer")
        settings = self.settings()
        for value in settings:
            table.add_column(_label(self.setting, value), justify="right")
        for layer in self.layers():
            by_setting = {p.setting: p for p in self._of(layer)}
            table.add_row(layer, *(f"{100 * by_setting[v].accuracy:.2f} ({-by_setting[v].drop:+.2f})"
                                   if v in by_setting else "" for v in settings))
        return table

    def plot(self, path: str | Path) -> Path:
        """Save the scan as a chart to `path` (PNG/SVG/PDF) and return the path.

        One setting: a bar per layer rising or falling from the baseline (network order). Several:
        one accuracy-vs-setting curve per layer. Either way the accuracy axis (%) fits the data
        around the baseline (a dashed line), so a drop of a tenth of a point is visible.
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        layers, settings, base = self.layers(), self.settings(), 100 * self.baseline
        if len(settings) == 1:
            fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers)), 4))
            accuracies = [100 * self._of(layer)[0].accuracy for layer in layers]
            ax.bar(range(len(layers)), [a - base for a in accuracies], bottom=base,
                   color=["tab:orange" if a < base else "tab:blue" for a in accuracies])
            ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=7)
            ax.set_title(f"accuracy with one layer at {_label(self.setting, settings[0])}")
        else:
            fig, ax = plt.subplots(figsize=(8, 5))
            accuracies = []
            for layer, accs in self.accuracy.items():
                values = sorted(p.setting for p in self._of(layer))
                ax.plot(values, [100 * a for a in accs], marker="o", label=layer)
                accuracies += [100 * a for a in accs]
            ax.set_xlabel(f"{self.setting} of the layer")
            ax.set_title(f"per-layer {self.technique} sensitivity")
        ax.axhline(base, color="black", linestyle="--", label=f"baseline {base:.2f}%")
        low, high = min([*accuracies, base]), max([*accuracies, base])
        margin = max(0.1 * (high - low), 0.2)  # points
        ax.set_ylim(max(low - margin, 0), min(high + margin, 100))
        ax.set_ylabel("top-1 accuracy (%)")
        if len(layers) <= 20:
            ax.legend(fontsize="x-small", ncol=2)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    def to_json(self) -> dict[str, Any]:
        """JSON-able form; `from_json` reads it back."""
        return {"baseline": self.baseline, "setting": self.setting, "technique": self.technique,
                "drop_unit": "points", "layers": [asdict(p) for p in self.points]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SensitivityScan:
        """The scan `to_json` wrote; EffdlError if `data` is not one."""
        try:
            points = [LayerSensitivity(**p) for p in data["layers"]]
            return cls(float(data["baseline"]), data["setting"], data["technique"], points)
        except (KeyError, TypeError) as exc:
            raise EffdlError(f"not a sensitivity scan record ({exc})") from None


def _label(setting: str, value: float) -> str:
    if setting == "bits":
        return f"{int(value)} bits"
    if setting == "sparsity":
        return f"{value:.0%}"
    return f"{setting} {value:g}"
