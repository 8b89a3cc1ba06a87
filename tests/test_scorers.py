"""The three scorers against the public reference values of spec/scoring.md, and `effdl score`."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from torch import nn

from effdl.checkpoint import save_model
from effdl.cli import score as score_cli
from effdl.errors import EffdlError
from effdl.measure import profile, score
from effdl.models import create_model


def nonzero_params(model: nn.Module) -> nn.Module:
    """Every parameter non-zero and representable in fp16 (fresh BN biases are exact zeros)."""
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(0.5, 1.0)
    return model


class TinyNet(nn.Module):
    """conv 3->4 (3x3, no bias) -> BN -> ReLU -> global average pool -> linear 4->2, on 3x8x8."""

    def __init__(self, conv: nn.Conv2d | None = None):
        super().__init__()
        self.conv = conv if conv is not None else nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.relu(self.bn(self.conv(x)))), 1))


TINY_INPUT = (1, 3, 8, 8)


class Quant4Conv(nn.Conv2d):
    """Test-only quantized layer: 4-bit weights (16 levels), float activations."""

    weight_bits = 4

    def quantized_weight(self):
        scale = self.weight.abs().max() / 7
        return torch.clamp(torch.round(self.weight / scale), -8, 7) * scale


class BinaryConv(nn.Conv2d):
    """Test-only binary layer: weights +-alpha, float activations."""

    weight_bits = 1

    def quantized_weight(self):
        return torch.where(self.weight >= 0, 1.0, -1.0) * self.weight.abs().mean()


class Claims2Bits(nn.Conv2d):
    weight_bits = 2


def by_name(result):
    return {c.name: c for c in result.contributions}


# ------------------------------------------------------------------- rules on a hand-counted net
def test_micronet_rules_on_a_hand_counted_net():
    result = score(nonzero_params(TinyNet()), "micronet", input_size=TINY_INPUT, freebie=False)
    out = 4 * 8 * 8  # conv output elements; dot length 27
    # conv weights 108 + the folded BN shift as a conv bias 4 + linear 8 + 2; BN scale is free
    assert result.params == 108 + 4 + 8 + 2
    conv_ops = 27 * out + 27 * out  # 27 multiplies, 26 adds + 1 bias add per output element
    relu_ops = out
    pool_ops = 4 + 63 * 4  # C multiplies, (H*W - 1) * C adds
    fc_ops = 8 + 3 * 2 + 2
    assert result.ops == conv_ops + relu_ops + pool_ops + fc_ops
    assert by_name(result)["bn"].ops == 0 and by_name(result)["bn"].params == 0
    assert result.score == pytest.approx(result.params / 36.5e6 + result.ops / 10.49e9)


def test_micronet_freebie_counts_params_and_multiplies_at_16_bits_and_adds_at_32():
    model = nonzero_params(TinyNet())
    full = score(model, "micronet", input_size=TINY_INPUT, freebie=False)
    free = score(model, "micronet", input_size=TINY_INPUT)
    assert free.params == full.params / 2
    mults = 27 * 256 + 256 + 4 + 8
    adds = 27 * 256 + 63 * 4 + 3 * 2 + 2
    assert full.ops == mults + adds
    assert free.ops == mults / 2 + adds


def test_imt2021_rules_on_a_hand_counted_net():
    result = score(nonzero_params(TinyNet()), "imt2021", input_size=TINY_INPUT)
    assert result.params == 108 + 8 + 10  # every parameter, BN included, at 32 bits
    out = 256
    conv = (27 * 1 + 27 - 1) * out  # q = 1 at 32 bits
    bn, relu, pool = 3 * out, out, (63 + 1) * 4
    fc = (4 * 1 + 4 - 1) * 2 + 2
    assert result.ops == conv + bn + relu + pool + fc


def test_imt2021_counts_functional_relu_like_the_module():
    class FunctionalTiny(TinyNet):
        def forward(self, x):
            x = torch.nn.functional.relu(self.bn(self.conv(x)))
            return self.fc(torch.flatten(torch.nn.functional.avg_pool2d(x, 8), 1))

    model = nonzero_params(TinyNet())
    functional = FunctionalTiny()
    functional.load_state_dict(model.state_dict())
    assert score(functional, "imt2021", input_size=TINY_INPUT).ops == score(model, "imt2021", input_size=TINY_INPUT).ops


def test_imt2024_rules_on_a_hand_counted_net():
    result = score(nonzero_params(TinyNet()), "imt2024", input_size=TINY_INPUT)
    assert result.params == 108 + 10  # conv + linear weights and biases
    assert result.ops == 27 * 256 + 8  # MACs
    assert result.score == pytest.approx(118 / 5.6e6 + (27 * 256 + 8) / 2.8e8)


# ----------------------------------------------------------------------- public reference values
def test_wrn_28_10_micronet_reference_at_32_bits():
    result = score(create_model("wrn_28_10", num_classes=100), "micronet", "cifar100", freebie=False)
    assert result.params == pytest.approx(36.5e6, rel=0.01)
    assert result.ops == pytest.approx(10.49e9, rel=0.01)
    assert result.score == pytest.approx(2.0, rel=0.02)


@pytest.fixture(scope="module")
def resnet18_profiles():
    torch.manual_seed(0)
    model = nonzero_params(create_model("resnet18"))
    fp32 = profile(model)
    return fp32, profile(model.half())


def test_imt2021_resnet18_reference_at_16_bits(resnet18_profiles):
    _, fp16 = resnet18_profiles
    result = score(fp16, "imt2021", "cifar10")
    assert result.ref_params == 5_586_981 and result.ref_ops == 834_362_880
    assert result.params == 11_173_962 / 2
    assert result.ops == pytest.approx(834_362_880, rel=0.005)


def test_imt2024_resnet18_scores(resnet18_profiles):
    fp32, fp16 = resnet18_profiles
    assert score(fp32, "imt2024").score == pytest.approx(3.98, abs=0.01)
    assert score(fp16, "imt2024").score == pytest.approx(1.99, abs=0.01)


def test_half_model_is_scored_at_16_bits(resnet18_profiles):
    fp32, fp16 = resnet18_profiles
    full, half = score(fp32, "micronet", freebie=False), score(fp16, "micronet", freebie=False)
    assert half.params == full.params / 2
    assert half.ops < full.ops
    # the freebie gives an unquantized fp32 entry exactly what a real fp16 model gets
    assert score(fp32, "micronet").score == pytest.approx(half.score)


# --------------------------------------------------------------------------- bits and sparsity
def test_fake_quantized_layer_counts_at_4_bits_and_cancels_the_freebie():
    model = nonzero_params(TinyNet(Quant4Conv(3, 4, 3, padding=1, bias=False)))
    result = score(model, "micronet", input_size=TINY_INPUT)
    assert any("no 16-bit freebie" in note for note in result.notes)
    parts = by_name(result)
    assert parts["conv"].params == 108 * 4 / 32 + 4  # 4-bit weights, folded BN shift at 32 bits
    assert parts["fc"].params == 10  # the unquantized layer is back at 32 bits
    imt = by_name(score(model, "imt2024", input_size=TINY_INPUT))
    assert imt["conv"].params == 108 * 4 / 32
    assert imt["conv"].ops == 27 * 256  # max(4, 32 activation bits) / 32 = 1


def test_binary_weights_times_float_activations_cost_one_32nd():
    model = nonzero_params(TinyNet(BinaryConv(3, 4, 3, padding=1, bias=False)))
    parts = by_name(score(model, "micronet", input_size=TINY_INPUT))
    assert parts["conv"].ops == 27 * 256 / 32 + 27 * 256
    assert parts["conv"].params == 108 / 32 + 4


def test_a_layer_holding_more_values_than_its_bits_allow_is_an_error():
    model = TinyNet(Claims2Bits(3, 4, 3, padding=1, bias=False))
    with pytest.raises(EffdlError, match="declares 2-bit weights but holds 108 distinct values"):
        score(model, "micronet", input_size=TINY_INPUT)


def test_measured_sparsity_halves_the_right_terms():
    dense = nonzero_params(TinyNet())
    sparse = TinyNet()
    sparse.load_state_dict(dense.state_dict())
    with torch.no_grad():
        sparse.conv.weight.view(-1)[::2] = 0  # 54 of 108
    for scorer in ("micronet", "imt2021", "imt2024"):
        d = by_name(score(dense, scorer, input_size=TINY_INPUT, freebie=False))["conv"]
        s = by_name(score(sparse, scorer, input_size=TINY_INPUT, freebie=False))["conv"]
        if scorer == "micronet":
            assert s.params == (54 * 32 + 108) / 32 + 4  # non-zeros + bitmask, plus the folded shift
            # per output element: L = 27 / 2 multiplies, L - 1 adds and 1 folded-bias add
            assert s.ops == 2 * 54 * 64 and d.ops == 2 * s.ops
        elif scorer == "imt2021":
            assert s.params == d.params / 2 and s.ops == d.ops
        else:
            assert s.params == d.params / 2 and s.ops == d.ops


def test_a_physically_smaller_model_scores_lower():
    big, small = profile(create_model("resnet20")), profile(create_model("resnet20", width=0.5))
    for scorer in ("micronet", "imt2021", "imt2024"):
        assert score(small, scorer).score < score(big, scorer).score / 3


# ------------------------------------------------------------------------ tracks and thresholds
def test_thresholds_are_checked_with_exact_counts():
    prof = profile(TinyNet(), TINY_INPUT)
    cifar100 = score(prof, "micronet", "cifar100")
    assert cifar100.qualifies(8_000, 10_000) and not cifar100.qualifies(7_999, 10_000)
    imagenet = score(prof, "micronet", "imagenet")
    assert imagenet.qualifies(37_500, 50_000) and not imagenet.qualifies(37_499, 50_000)
    assert (imagenet.ref_params, imagenet.ref_ops) == (6.9e6, 1170e6)
    for scorer in ("imt2021", "imt2024"):
        cifar10 = score(prof, scorer, "cifar10")
        assert cifar10.qualifies(9_000, 10_000) and not cifar10.qualifies(8_999, 10_000)
    assert not cifar100.qualifies(0, 0)


def test_unknown_scorer_or_track_suggests_names():
    prof = profile(TinyNet(), TINY_INPUT)
    with pytest.raises(EffdlError, match="did you mean micronet"):
        score(prof, "micronett")
    with pytest.raises(EffdlError, match="did you mean cifar10"):
        score(prof, "imt2024", "cifar100")


# ------------------------------------------------------------------------------------ effdl score
def effdl_score(*argv: str) -> int:
    """Run `effdl score ARGV` in this process (a subprocess would pay the CLI's import time)."""
    parser = argparse.ArgumentParser(prog="effdl")
    score_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["score", *argv])
    return args.func(args)


def run_json(capsys, *argv: str) -> dict:
    assert effdl_score(*argv, "--json") == 0
    return json.loads(capsys.readouterr().out)


def test_cli_json_matches_the_python_api(capsys):
    out = run_json(capsys, "resnet20", "--scorer", "imt2024")
    assert out["scores"][0]["score"] == pytest.approx(score(create_model("resnet20"), "imt2024").score)
    assert out["profile"]["params"] == profile(create_model("resnet20")).params
    half = run_json(capsys, "resnet20", "--half", "--track", "cifar10")
    assert [(s["scorer"], s["track"]) for s in half["scores"]] == [
        ("micronet", "cifar100"), ("imt2021", "cifar10"), ("imt2024", "cifar10")]
    assert {r["weight_bits"] for r in half["profile"]["layers"] if r["kind"] == "conv"} == {16}


def test_cli_evaluates_a_checkpoint_on_its_dataset(capsys, tmp_path):
    path = save_model(tmp_path / "m.safetensors", create_model("resnet20", width=0.25),
                      config={"dataset": "synthetic"})
    out = run_json(capsys, str(path), "--scorer", "imt2024", "--eval", "--tta")
    acc = out["accuracy"]
    assert acc["dataset"] == "synthetic" and acc["total"] == 256
    assert out["scores"][0]["qualifies"] == (acc["correct"] * 10 >= 9 * acc["total"])


def test_cli_table_and_errors(capsys):
    assert effdl_score("resnet20", "--scorer", "micronet", "--track", "imagenet") == 0
    printed = capsys.readouterr().out
    assert "layers.0.0.conv1" in printed and "imagenet" in printed and "MobileNetV2" in printed
    with pytest.raises(EffdlError, match="unknown scorer 'imt2025'; did you mean"):
        effdl_score("resnet20", "--scorer", "imt2025")
    with pytest.raises(EffdlError, match="unknown track"):
        effdl_score("resnet20", "--track", "mnist")
    with pytest.raises(EffdlError, match="--input-size"):
        effdl_score("resnet20", "--input-size", "3,x,32")


# ------------------------------------------------------------- the model's own input size
def test_a_model_is_measured_at_the_size_it_was_trained_at():
    model = create_model("resnet20", width=0.25)
    at_32 = profile(model)
    model.effdl_data = {"dataset": "synthetic", "input_size": [3, 64, 64], "mean": [0.5] * 3, "std": [0.25] * 3,
                        "classes": None, "resize": None}
    prof = profile(model)
    assert prof.input_shape == (1, 3, 64, 64)
    assert prof.macs == profile(model, (1, 3, 64, 64)).macs > 3.9 * at_32.macs
    assert score(model, "imt2024").score == pytest.approx(score(prof, "imt2024").score)


def test_cli_scores_and_evaluates_a_checkpoint_at_its_own_size(capsys, tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    import effdl.measure

    rng = np.random.default_rng(0)
    for split, count in (("train", 2), ("test", 3)):
        for label in ("a", "b"):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    model = create_model("resnet20", width=0.25, num_classes=2)
    model.effdl_data = {"dataset": f"imagefolder:{tmp_path / 'images'}", "input_size": [3, 64, 64],
                        "mean": [0.5] * 3, "std": [0.25] * 3, "classes": ["a", "b"], "resize": None}
    path = save_model(tmp_path / "m.safetensors", model, config={"dataset": model.effdl_data["dataset"]})
    seen = []
    evaluate = effdl.measure.evaluate

    def spy(evaluated, loader, **kwargs):
        seen.append(tuple(loader.images.shape[1:]))
        return evaluate(evaluated, loader, **kwargs)

    monkeypatch.setattr(effdl.measure, "evaluate", spy)
    out = run_json(capsys, str(path), "--scorer", "imt2024", "--eval")
    assert out["profile"]["input_shape"] == [1, 3, 64, 64]
    assert out["profile"]["macs"] == profile(model, (1, 3, 64, 64)).macs
    assert seen == [(3, 64, 64)] and out["accuracy"]["total"] == 6 and out["notes"] == []
    out = run_json(capsys, str(path), "--scorer", "imt2024", "--input-size", "3,32,32")
    assert out["profile"]["input_shape"] == [1, 3, 32, 32]
    assert out["notes"] == ["note: measured at --input-size 3x32x32; the model was trained at 3x64x64"]


def test_one_parameter_count_everywhere(capsys, tmp_path):
    from effdl.cli import info as info_cli
    from effdl.models import count_parameters

    model = create_model("resnet20")
    assert count_parameters(model) == profile(model).params == 272_474  # BN running statistics excluded
    path = save_model(tmp_path / "r20.safetensors", model)
    parser = argparse.ArgumentParser(prog="effdl")
    info_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["info", str(path)])
    assert args.func(args) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 272_474 and "buffers" in info["parameters_counted"]
    assert run_json(capsys, "resnet20", "--scorer", "imt2024")["profile"]["params"] == 272_474


def test_cli_lists_parameters_no_operation_uses(capsys, monkeypatch):
    from effdl.cli import common

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.aux = nn.Linear(4, 2)

        def forward(self, x):
            return self.conv(x)

    monkeypatch.setattr(common, "model_from_ref", lambda ref, num_classes=10: (Unused(), {}))
    monkeypatch.setattr(score_cli, "model_from_ref", common.model_from_ref)
    assert effdl_score("resnet20", "--scorer", "imt2024") == 0
    assert "warning: parameter aux.weight (8 values) is used by no counted operation" in capsys.readouterr().out
