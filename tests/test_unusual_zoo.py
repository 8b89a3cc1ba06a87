"""A zoo of unusual modules through every measuring and compressing verb, each checked independently.

The "Trust" bar: transposed and 1-D convolutions, matmul-family heads, dict outputs, reshapes
between layers, shared and grouped convolutions go through profile, prune, quantize, export and
the export check, and every result is compared with a reference that does not share effdl's code:
MACs with torch's FlopCounterMode, pruned shapes with the asked ratio and the original outputs,
quantized outputs with the float model's, ONNX outputs with a plain onnxruntime run.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from effdl.compress.prune import prune_channels
from effdl.compress.quantize import FakeQuantConfig, calibrate, quantize_
from effdl.core.modules import output_leaves
from effdl.deploy.onnx import export_verified
from effdl.measure import profile


class Transposed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(self.up(torch.relu(self.conv(x))).mean((2, 3)))


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv1d(3, 8, 5, padding=2)
        self.conv1 = nn.Conv1d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv1(torch.relu(self.conv0(x)))).mean(2))


class MatmulHead(nn.Module):
    """Features from a conv, then classifiers written as addmm and einsum with raw parameters."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.w = nn.Parameter(torch.randn(8, 5) * 0.3)
        self.b = nn.Parameter(torch.zeros(5))
        self.v = nn.Parameter(torch.randn(8, 5) * 0.3)

    def forward(self, x):
        f = torch.relu(self.conv(x)).mean((2, 3))
        return torch.addmm(self.b, f, self.w) + torch.einsum("bc,ck->bk", f, self.v)


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        features = torch.relu(self.conv(x)).mean((2, 3))
        return {"logits": self.fc(features), "features": features}


class Reshaped(nn.Module):
    """The issue's reproduction: conv -> flatten -> Linear -> view -> conv -> mean -> fc."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, stride=8, padding=1)
        self.lin = nn.Linear(128, 256)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        h = self.lin(torch.relu(self.conv0(x)).flatten(1))
        return self.fc(torch.relu(self.conv1(h.view(-1, 16, 4, 4))).mean((2, 3)))


class SharedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(self.shared(h))
        return self.fc(torch.relu(self.shared(h)).mean((2, 3)))


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.mix = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        h = torch.relu(self.grouped(torch.relu(self.stem(x))))
        return self.fc(torch.relu(self.mix(h)).mean((2, 3)))


ZOO = {
    "transposed": (Transposed, (1, 3, 16, 16)),
    "conv1d": (Conv1dNet, (1, 3, 64)),
    "matmul_head": (MatmulHead, (1, 3, 16, 16)),
    "dict_out": (DictOut, (1, 3, 16, 16)),
    "reshaped": (Reshaped, (1, 3, 32, 32)),
    "shared_conv": (SharedConv, (1, 3, 16, 16)),
    "grouped": (Grouped, (1, 3, 16, 16)),
}


def build(name: str) -> tuple[nn.Module, tuple[int, ...], torch.Tensor]:
    torch.manual_seed(0)
    cls, shape = ZOO[name]
    model = cls().eval()
    model.effdl_data = {"input_size": list(shape[1:])}
    return model, shape, torch.randn(64, *shape[1:], generator=torch.Generator().manual_seed(1))


def leaves(output) -> list[torch.Tensor]:
    return [t.detach() for t in output_leaves(output)]


@pytest.mark.parametrize("name", sorted(ZOO))
def test_profile_counts_what_flop_counter_counts(name):
    model, shape, _ = build(name)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(shape))
    assert profile(model).macs == counter.get_total_flops() // 2 > 0


@pytest.mark.parametrize("name", sorted(ZOO))
def test_pruning_never_exceeds_the_ratio_and_keeps_the_function_checked(name):
    model, _, x = build(name)
    before = {n: m.weight.shape[0] for n, m in model.named_modules() if hasattr(m, "weight")}
    expected = leaves(model(x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layers left whole are warned about; the result lists them
        result = prune_channels(model, 0.3)
    after = {n: m.weight.shape[0] for n, m in model.named_modules() if hasattr(m, "weight")}
    for layer, count in before.items():  # never more than 30% of any layer's outputs
        assert after[layer] >= count - int(0.3 * count), (layer, count, after[layer])
    assert set(result) <= set(before) and set(result.skipped) <= set(before)
    if name == "grouped":  # channels into and out of a grouped conv are left whole, and listed
        assert "grouped" in result.skipped or "stem" in result.skipped
    got = leaves(model(x))  # the pruned model runs on its own input, with the same output shapes
    assert [g.shape for g in got] == [e.shape for e in expected]
    if not result:  # nothing removed: exactly the same function
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_8_bit_quantization_stays_close_to_the_float_model(name):
    model, _, x = build(name)
    q = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unsupported layer types stay float, with one warning
        quantize_(q, FakeQuantConfig(weight_bits=8, act_bits=8, method="minmax", first_last_bits=8))
    calibrate(q, x)
    for g, e in zip(leaves(q(x)), leaves(model(x))):
        scale = e.abs().max().item() + 1e-6
        assert (g - e).abs().max().item() <= 0.05 * scale  # a few int8 steps, not a different function


@pytest.mark.parametrize("name", sorted(ZOO))
def test_export_matches_a_plain_onnxruntime_run_output_by_output(name, tmp_path):
    model, shape, x = build(name)
    path, check = export_verified(model, tmp_path / f"{name}.onnx", images=x, exporter="torchscript")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    expected = leaves(model(x))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e.numpy(), atol=1e-4, rtol=1e-3)
    assert check.max_abs_diff < 1e-3
