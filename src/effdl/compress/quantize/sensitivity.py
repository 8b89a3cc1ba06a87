"""Per-layer quantization sensitivity: accuracy after quantizing one layer at a time to b bits.

Each layer's weights are quantized alone (symmetric per-channel min-max, activations left in
float, so no calibration or training is involved) and the model is evaluated; layers whose
accuracy drops most deserve more bits in a mixed-precision config. The result is the
`SensitivityScan` every technique returns (effdl.measure.sensitivity: drops in percentage points).
"""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from effdl.compress.quantize.api import quantize_
from effdl.compress.quantize.config import FakeQuantConfig
from effdl.compress.quantize.layers import QUANTIZABLE
from effdl.data.loader import BatchLoader
from effdl.errors import EffdlError
from effdl.measure.accuracy import evaluate
from effdl.measure.sensitivity import LayerSensitivity, SensitivityScan


def sensitivity_scan(
    model: nn.Module, loader: BatchLoader, bits: int = 4, layers: list[str] | None = None
) -> SensitivityScan:
    """The accuracy of `model` with each layer's weights alone quantized to `bits` (setting "bits").

    The result also unpacks as `baseline, points = sensitivity_scan(...)`, as before it was a type.
    """
    config = FakeQuantConfig(weight_bits=bits, act_bits=None, method="minmax", first_last_bits=None,
                             quantize_outputs=False)
    names = [n for n, m in model.named_modules() if type(m) in QUANTIZABLE]
    unknown = sorted(set(layers or []) - set(names))
    if unknown:
        raise EffdlError(f"no Conv2d / Linear layer named {', '.join(unknown)}")
    baseline = evaluate(model, loader).top1
    accuracies = {}
    for name in layers or names:
        trial = copy.deepcopy(model)
        quantize_(trial, config, filter_fn=lambda _module, layer_name, target=name: layer_name == target)
        accuracies[name] = {bits: evaluate(trial, loader).top1}
    return SensitivityScan.from_accuracies(baseline, "bits", "quantization", accuracies)


def _scan(baseline: float, results: list[LayerSensitivity]) -> SensitivityScan:
    return SensitivityScan(baseline, "bits", "quantization", list(results))


def sensitivity_table(baseline: float, results: list[LayerSensitivity]):
    """A rich Table of the scan (kept for callers holding `baseline, results`; see SensitivityScan.table)."""
    return _scan(baseline, results).table()


def plot_sensitivity(baseline: float, results: list[LayerSensitivity], path: str | Path) -> Path:
    """Bar chart of the accuracy with each layer quantized, in network order, around the baseline
    (kept for callers holding `baseline, results`; see SensitivityScan.plot)."""
    return _scan(baseline, results).plot(path)


def sensitivity_records(baseline: float, results: list[LayerSensitivity]) -> dict:
    """JSON-able form of a scan (SensitivityScan.to_json)."""
    return _scan(baseline, results).to_json()
