"""One sensitivity-scan result type for pruning and quantization: accuracy in [0, 1], drop in points."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from effdl import EffdlError
from effdl.compress.prune import measure_sparsity
from effdl.compress.prune import sensitivity_scan as prune_scan
from effdl.compress.quantize import FakeQuantConfig, quantize_
from effdl.compress.quantize import sensitivity_scan as quantize_scan
from effdl.data import ImageDataset
from effdl.data.loader import BatchLoader
from effdl.measure.accuracy import evaluate
from effdl.measure.sensitivity import SensitivityScan


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 8 * 8, 4)).eval()


def _loader_it_gets_right(model: nn.Module, n: int = 128) -> BatchLoader:
    """Random images labelled with `model`'s own predictions: its baseline accuracy is exactly 1."""
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    data = ImageDataset("random", images, torch.zeros(n, dtype=torch.long), images, torch.zeros(n, dtype=torch.long),
                        list("abcd"), (0.5,) * 3, (0.25,) * 3)
    loader = BatchLoader.for_split(data, "test", batch_size=64)
    with torch.no_grad():
        labels = torch.cat([model(x).argmax(1) for x, _ in loader])
    assert len(labels.unique()) > 1  # a model predicting one class would be insensitive to everything
    data = ImageDataset("random", images, labels, images, labels, list("abcd"), (0.5,) * 3, (0.25,) * 3)
    return BatchLoader.for_split(data, "test", batch_size=64)


def test_quantization_scan_reports_drops_in_points_of_each_layer_quantized_alone():
    model = _net()
    loader = _loader_it_gets_right(model)
    scan = quantize_scan(model, loader, bits=2)
    assert isinstance(scan, SensitivityScan) and scan.setting == "bits" and scan.baseline == 1.0
    assert scan.layers() == ["0", "2", "5"] and scan.settings() == [2]
    for point in scan.points:
        alone = quantize_(copy.deepcopy(model), FakeQuantConfig(weight_bits=2, act_bits=None, method="minmax",
                                                                first_last_bits=None),
                          filter_fn=lambda _m, name, target=point.layer: name == target)
        assert point.accuracy == evaluate(alone, loader).top1
        assert point.drop == pytest.approx(100 * (1.0 - point.accuracy))
    assert max(p.drop for p in scan.points) > 1  # 2-bit weights cost points somewhere: the unit is points
    baseline, points = scan  # the form callers used before the type
    assert baseline == scan.baseline and points == scan.points and points[0].bits == 2


def test_pruning_scan_is_the_same_type_with_drops_in_points(tmp_path):
    model = _net()

    def accuracy(m):  # layer "0" is fragile: pruning it half costs 25 points
        return 1.0 - 0.5 * measure_sparsity(m).per_layer["0"]

    scan = prune_scan(model, accuracy, sparsities=[0.5, 0.9])
    assert isinstance(scan, SensitivityScan) and scan.setting == "sparsity"
    by_key = {(p.layer, p.setting): p for p in scan.points}
    assert by_key[("0", 0.5)].drop == pytest.approx(100 * 0.5 * round(0.5 * 216) / 216)
    assert by_key[("2", 0.9)].drop == 0.0
    assert scan.drops()["0"][0] == by_key[("0", 0.5)].drop
    assert scan.layer_targets(max_drop_points=30) == scan.layer_targets(max_drop=0.30) == {"0": 0.5, "2": 0.9,
                                                                                           "5": 0.9}
    with pytest.raises(EffdlError, match="exactly one"):
        scan.layer_targets()
    assert SensitivityScan.from_json(scan.to_json()) == scan
    assert scan.to_json()["drop_unit"] == "points"


def test_a_multi_setting_plot_fits_its_axis_around_the_baseline(tmp_path, monkeypatch):
    import matplotlib.figure

    scan = SensitivityScan.from_accuracies(0.90, "sparsity", "pruning",
                                           {"a": {0.5: 0.899, 0.9: 0.88}, "b": {0.5: 0.90, 0.9: 0.895}})
    limits = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: (limits.append(fig.axes[0].get_ylim()), save(fig, *a, **k)))
    assert scan.plot(tmp_path / "s.png").stat().st_size > 1000
    (low, high), = limits
    assert 87 < low < 88 and 90 < high < 91  # a 2-point spread fills the axis, not 0-100%
    assert scan.table().row_count == 2
