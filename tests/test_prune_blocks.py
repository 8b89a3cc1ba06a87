"""Block (depth) pruning: which blocks are removable, the distortion ranking, MAC targets, reload and
export (the `effdl prune --method block` command is tested in test_prune_cli.py)."""

import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from effdl.checkpoint import load_model, save_model
from effdl.compress.quantize import Int8StaticConfig, fold_batchnorm, quantize_
from effdl.compress.prune import BlockPruneConfig, block_distortion, prune_, prune_blocks, removable_blocks
from effdl.deploy.int8 import export_int8_onnx, optimized_op_counts
from effdl.deploy.onnx import check_onnx, export_onnx
from effdl.errors import EffdlError
from effdl.measure.counting import profile
from effdl.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")

X = torch.randn(2, 3, 32, 32)


def resnet20(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("resnet20", width=0.25).eval()


def test_identity_blocks_are_found_in_effdl_and_torchvision_models():
    # resnet20: 3 stages x 3 blocks; the first block of stages 2 and 3 has a projection shortcut.
    assert removable_blocks(resnet20(), X) == [
        "layers.0.0", "layers.0.1", "layers.0.2", "layers.1.1", "layers.1.2", "layers.2.1", "layers.2.2"]
    # torchvision resnet18: layer1 keeps its width and stride, so both its blocks are identity blocks.
    assert removable_blocks(torchvision.models.resnet18(num_classes=10), X) == [
        "layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    found = removable_blocks(torchvision.models.mobilenet_v2(num_classes=10), X)
    model = torchvision.models.mobilenet_v2(num_classes=10)
    assert found and all(model.get_submodule(name).use_res_connect for name in found)
    # a plain chain of convolutions has no shortcut to fall back on
    assert removable_blocks(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU()), X) == []


def test_the_least_disruptive_blocks_go_and_the_model_keeps_its_function_elsewhere(tmp_path):
    model = resnet20()
    # make one block nearly a no-op: its output distortion is then the smallest, so it goes first
    nn.init.zeros_(model.layers[1][2].bn2.weight)
    nn.init.zeros_(model.layers[1][2].bn2.bias)
    batches = [torch.randn(16, 3, 32, 32)]
    scores = block_distortion(model, removable_blocks(model, X), batches)
    assert min(scores, key=scores.get) == "layers.1.2" and scores["layers.1.2"] < 1e-6
    reference = model(X)
    before = profile(model).macs
    result = prune_(model, BlockPruneConfig(blocks=1), calibration=batches)
    assert result.removed == ["layers.1.2"] and isinstance(model.layers[1][2], nn.Identity)
    # removing a block whose residual branch is zero changes nothing
    torch.testing.assert_close(model(X), reference)
    assert result.macs_before == before and profile(model).macs == result.macs_after < before
    assert torch.equal(roundtrip(model, tmp_path)(X), model(X))


def test_a_mac_target_removes_blocks_until_it_is_met_and_the_model_exports(tmp_path):
    model = resnet20()
    before = profile(model).macs
    result = prune_(model, BlockPruneConfig(target_macs=0.7), calibration=[torch.randn(8, 3, 32, 32)])
    after = profile(model).macs
    assert after <= 0.7 * before and after == result.macs_after
    # each of resnet20's identity blocks holds under a seventh of its MACs: 0.7x needs at least two
    assert len(result.removed) >= 2
    path = export_onnx(model, tmp_path / "blocks.onnx")
    assert check_onnx(model, path) < 1e-4  # the largest |ONNX Runtime - PyTorch| output difference


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.shortcut = nn.Conv2d(8, 8, 3, padding=1), nn.Sequential()

    def forward(self, x):
        return torch.relu(x + self.conv(x))


class Outer(nn.Module):
    """An identity block whose residual branch is two identity blocks."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.shortcut = Inner(), Inner(), nn.Sequential()

    def forward(self, x):
        return x + self.b(self.a(x))


def test_nested_blocks_are_never_both_removed_and_their_macs_are_counted_once():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), Outer(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    x = torch.randn(2, 3, 8, 8)
    assert removable_blocks(model, x) == ["2", "2.a", "2.b"]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(EffdlError, match="only 1 can go together"):
        prune_blocks(model, blocks=2, include=["2", "2.a"], example_inputs=x)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # left whole
    result = prune_blocks(model, target_macs=0.5, example_inputs=x, calibration=[torch.randn(8, 3, 8, 8)])
    assert result.macs_after == profile(model, (1, 3, 8, 8)).macs <= 0.5 * result.macs_before
    assert not any(a != b and a.startswith(b + ".") for a in result.removed for b in result.removed)


def test_a_block_pruned_resnet_still_adds_on_integers_in_int8(tmp_path):
    model = resnet20()
    prune_blocks(model, blocks=2, include=["layers.0.0", "layers.2.1"])
    path = export_int8_onnx(model, tmp_path / "int8.onnx", torch.randn(64, 3, 32, 32))
    # the removed blocks are identities the graph drops: the shortcut after each still reads integers
    counts = optimized_op_counts(path)
    assert counts.get("QLinearAdd") == 6 and counts.get("Add") == 1 and counts.get("QLinearConv") == 17


def test_include_and_exclude_choose_among_removable_blocks():
    model = resnet20()
    result = prune_blocks(model, blocks=2, include=["layers.0.*"], exclude=["layers.0.0"])
    assert sorted(result.removed) == ["layers.0.1", "layers.0.2"]


def test_natural_python_inputs_are_taken_and_a_quantized_model_is_refused():
    model = resnet20()
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    config = BlockPruneConfig(blocks=np.int64(1), include="layers.2.*")  # one pattern as a string
    assert config.blocks == 1 and config.include == ("layers.2.*",)
    # a tensor is one calibration batch; (inputs, labels) pairs, as a DataLoader yields, give their inputs
    assert prune_(copy.deepcopy(model), config, calibration=images).removed == \
        prune_(copy.deepcopy(model), config, calibration=[(images, labels)]).removed
    with pytest.raises(EffdlError, match="target_macs must be a number"):
        BlockPruneConfig(target_macs="0.5")
    # a quantized model's quantizers are tied to its layers: prune the float model first
    fold_batchnorm(model)
    quantize_(model, Int8StaticConfig())
    with pytest.raises(EffdlError, match="cannot prune a quantized model"):
        prune_(model, config, calibration=images)


@pytest.mark.parametrize("kwargs,message", [
    ({"blocks": 8}, "has 7 removable"),
    ({"blocks": 0}, "whole number >= 1"),
    ({"blocks": True}, "whole number >= 1"),
    ({"target_macs": 1.5}, "(0, 1)"),
    ({"target_macs": 0.05}, "combine with channel pruning"),
    ({}, "exactly one of"),
    ({"blocks": 1, "include": ["layer.9.*"]}, "matches no removable block"),
])
def test_bad_block_options_are_refused_and_leave_the_model_whole(kwargs, message):
    model = resnet20()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(EffdlError) as info:
        prune_blocks(model, **kwargs)
    assert message in str(info.value)
    assert not any(isinstance(m, nn.Identity) for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def roundtrip(model: nn.Module, tmp_path) -> nn.Module:
    save_model(tmp_path / "blocks.safetensors", model)
    loaded, _ = load_model(tmp_path / "blocks.safetensors")
    return loaded.eval()
