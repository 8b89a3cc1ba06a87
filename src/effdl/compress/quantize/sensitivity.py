"""Per-layer quantization sensitivity: accuracy after quantizing one layer at a time to b bits.

Each layer's weights are quantized alone (symmetric per-channel min-max, activations left in
float, so no calibration or training is involved) and the model is evaluated; layers whose
accuracy drops most deserve more bits in a mixed-precision config.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from effdl.compress.quantize.api import quantize_
from effdl.compress.quantize.config import FakeQuantConfig
from effdl.compress.quantize.layers import QUANTIZABLE
from effdl.data.loader import BatchLoader
from effdl.errors import EffdlError
from effdl.measure.accuracy import evaluate


@dataclass(frozen=True)
class LayerSensitivity:
    layer: str
    bits: int
    accuracy: float  # top-1 in [0, 1] with only this layer quantized
    drop: float  # baseline accuracy minus `accuracy`, in points (0..100)


def sensitivity_scan(
    model: nn.Module, loader: BatchLoader, bits: int = 4, layers: list[str] | None = None
) -> tuple[float, list[LayerSensitivity]]:
    """(baseline top-1, one LayerSensitivity per layer) for weights quantized to `bits`."""
    config = FakeQuantConfig(weight_bits=bits, act_bits=None, method="minmax", first_last_bits=None)
    names = [n for n, m in model.named_modules() if type(m) in QUANTIZABLE]
    unknown = sorted(set(layers or []) - set(names))
    if unknown:
        raise EffdlError(f"no Conv2d / Linear layer named {', '.join(unknown)}")
    baseline = evaluate(model, loader).top1
    results = []
    for name in layers or names:
        trial = copy.deepcopy(model)
        quantize_(trial, config, filter_fn=lambda _module, layer_name, target=name: layer_name == target)
        accuracy = evaluate(trial, loader).top1
        results.append(LayerSensitivity(name, bits, accuracy, 100 * (baseline - accuracy)))
    return baseline, results


def sensitivity_table(baseline: float, results: list[LayerSensitivity]):
    """A rich Table of the scan, most sensitive layer first."""
    from rich.table import Table

    table = Table(title=f"quantization sensitivity (baseline {100 * baseline:.2f}%)")
    for column in ("layer", "bits", "accuracy %", "drop (points)"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for r in sorted(results, key=lambda r: -r.drop):
        table.add_row(r.layer, str(r.bits), f"{100 * r.accuracy:.2f}", f"{r.drop:+.2f}")
    return table


def plot_sensitivity(baseline: float, results: list[LayerSensitivity], path: str | Path) -> Path:
    """Bar chart of the accuracy with each layer quantized, in network order, with the baseline.

    Bars rise or fall from the baseline (a dashed line) and the axis fits the data, so a drop of a
    tenth of a point is visible (from 0%, a 1-point difference was not)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(results)), 4))
    accuracies = [100 * r.accuracy for r in results]
    ax.bar(range(len(results)), [a - 100 * baseline for a in accuracies], bottom=100 * baseline,
           color=["tab:orange" if a < 100 * baseline else "tab:blue" for a in accuracies])
    ax.axhline(100 * baseline, color="tab:red", linestyle="--", label=f"float {100 * baseline:.2f}%")
    low, high = min([*accuracies, 100 * baseline]), max([*accuracies, 100 * baseline])
    margin = max(0.1 * (high - low), 0.2)  # points
    ax.set_ylim(max(low - margin, 0), min(high + margin, 100))
    ax.set_xticks(range(len(results)), [r.layer for r in results], rotation=90, fontsize=7)
    ax.set_ylabel("top-1 accuracy (%)")
    bits = sorted({r.bits for r in results})
    ax.set_title(f"accuracy with one layer quantized to {'/'.join(map(str, bits))} bits")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sensitivity_records(baseline: float, results: list[LayerSensitivity]) -> dict:
    """JSON-able form of a scan."""
    return {"baseline": baseline, "layers": [asdict(r) for r in results]}
