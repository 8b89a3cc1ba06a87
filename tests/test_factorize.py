"""Factorization: each decomposition reproduces its layer, counts are real, checkpoints reload,
ONNX runs, torchvision models and quantization compose, bad input is refused, the CLI works."""

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effdl.checkpoint import load_model, save_model
from effdl.compress.factorize import (
    CPConfig,
    DepthwiseConfig,
    Factorized,
    GroupedConfig,
    SpatialSVDConfig,
    SVDConfig,
    Tucker2Config,
    factorize_,
    factorize_sensitivity,
)
from effdl.compress.factorize import decompose as dec
from effdl.compress.factorize.configs import SCAN_RATIOS
from effdl.errors import EffdlError
from effdl.measure.counting import profile

pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny(nn.Module):
    """3x3 convs (one strided, one with bias), a depthwise conv, a 1x1 conv and a Linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(12, 16, 3, stride=2, padding=1, bias=True)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.pw = nn.Conv2d(16, 16, 1, bias=False)
        self.fc = nn.Linear(16, 10)
        self.effdl_data = {"input_size": [3, 16, 16]}  # the size MACs are counted at

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.pw(self.dw(x)))
        return self.fc(x.mean((2, 3)))


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _layer_error(config, conv, x, calibration=None):
    model = nn.Sequential(conv)
    model.effdl_data = {"input_size": list(x.shape[1:])}  # the size the layer runs at, for its MAC count
    y = model(x)
    factorize_(model, config, calibration=calibration)
    assert isinstance(model[0], Factorized)
    return _rel(model(x), y)


@pytest.fixture
def conv():
    torch.manual_seed(0)
    return nn.Conv2d(8, 10, 3, stride=2, padding=1, bias=True)


@pytest.mark.parametrize("config_type,full,ranks", [
    (Tucker2Config, 8, (2, 4, 6)),  # full rank: min(O, I) = 8 on both modes (exact at (10, 8), checked below)
    (SpatialSVDConfig, 24, (2, 8, 16)),  # min(I*kh, O*kw) = 24
])
def test_low_rank_convs_reproduce_the_layer(conv, config_type, full, ranks):
    x = torch.randn(4, 8, 11, 11)
    errors = [_layer_error(config_type(rank=r), _copy(conv), x) for r in ranks]
    assert errors == sorted(errors, reverse=True) and errors[0] > 0.1
    if config_type is SpatialSVDConfig:
        assert _layer_error(config_type(rank=full), _copy(conv), x) < 1e-5


def _copy(module):
    import copy

    return copy.deepcopy(module)


def test_tucker_full_rank_and_cp_are_exact_enough(conv):
    x = torch.randn(4, 8, 11, 11)
    first, core, last = dec.tucker2_factors(conv.weight, (10, 8))
    y = F.conv2d(F.conv2d(F.conv2d(x, first), core, stride=2, padding=1), last)
    assert _rel(y, F.conv2d(x, conv.weight, stride=2, padding=1)) < 1e-5
    cp_errors = [_layer_error(CPConfig(rank=r), _copy(conv), x) for r in (2, 12, 40)]
    assert cp_errors[0] > cp_errors[1] > cp_errors[2] and cp_errors[2] < 0.2


def test_svd_of_linear_and_1x1(conv):
    torch.manual_seed(0)
    fc = nn.Linear(20, 12)
    x = torch.randn(16, 20)
    errors = [_layer_error(SVDConfig(rank=r), _copy(fc), x) for r in (2, 6, 12)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-5
    pointwise = nn.Conv2d(8, 6, 1)
    assert _layer_error(SVDConfig(rank=6), pointwise, torch.randn(2, 8, 5, 5)) < 1e-5


def test_depthwise_and_grouped_least_squares_beat_weight_only_fits(conv):
    torch.manual_seed(0)
    # inputs with strongly correlated channels: fitting on them must beat fitting the weights alone
    mix = torch.randn(8, 2)
    calibration = [torch.einsum("cj,njhw->nchw", mix, torch.randn(32, 2, 11, 11)) for _ in range(2)]
    x = torch.einsum("cj,njhw->nchw", mix, torch.randn(16, 2, 11, 11))
    for config in (DepthwiseConfig(), GroupedConfig(groups=2)):
        data_free = _layer_error(config, _copy(conv), x)
        fitted = _layer_error(config, _copy(conv), x, calibration=calibration)
        assert fitted < 0.8 * data_free, config
    # one group is the dense layer: the least-squares fit recovers it
    w = dec.fit_grouped(conv.weight, 1, 10)
    assert _rel(torch.einsum("om,mikl->oikl", w[1][:, :, 0, 0], w[0]), conv.weight) < 1e-5


@pytest.mark.parametrize("groups", ["depthwise", 2])
def test_grouped_fit_ends_at_the_least_squares_optimum_of_its_filters(groups):
    """The last ALS step leaves the kxk filters optimal for the mixing matrix: the gradient of
    tr((W - PB) G (W - PB)^T) on the existing weights vanishes (depthwise: solved exactly)."""
    torch.manual_seed(0)
    o, i = 12, 8
    weight = torch.randn(o, i, 3, 3)
    x = torch.einsum("cj,njhw->nchw", torch.randn(i, 3), torch.randn(32, 3, 6, 6)) + 0.1 * torch.randn(32, i, 6, 6)
    gram = dec.patch_gram(x, (3, 3), (1, 1), (1, 1), (1, 1))
    g, mid = (i, i) if groups == "depthwise" else (groups, o)
    filters, mixing = dec.fit_grouped(weight, g, mid, gram)
    b = torch.block_diag(*filters.double().reshape(g, mid // g, -1))  # (mid, i*9): group a reads its inputs
    mask = torch.block_diag(*torch.ones(g, mid // g, i * 9 // g)).bool()
    p, w = mixing.double()[:, :, 0, 0], weight.double().reshape(o, -1)
    gradient = (p.T @ (p @ b - w) @ gram) * mask
    assert float(gradient.norm() / ((p.T @ w @ gram) * mask).norm()) < 1e-4


def test_groups_that_do_not_divide_the_channels_are_one_clear_error():
    with pytest.raises(EffdlError, match="3 groups must divide the 8 input and 12 middle channels"):
        dec.fit_grouped(torch.randn(12, 8, 3, 3), 3, 12)


def test_a_zero_layer_or_zero_inputs_fit_to_zero_not_an_error():
    """A layer zeroed by global magnitude pruning (or fed only zeros) made the depthwise system
    singular: the fit is zero filters, not a linear-algebra traceback."""
    for weight, gram in ((torch.zeros(12, 8, 3, 3), torch.eye(72)), (torch.randn(12, 8, 3, 3), torch.zeros(72, 72))):
        for groups, mid in ((8, 8), (2, 12)):
            filters, mixing = dec.fit_grouped(weight, groups, mid, gram)
            assert torch.isfinite(filters).all() and torch.isfinite(mixing).all()


def test_a_ratio_rule_keeps_at_most_the_ratio_without_rounding_too():
    model = Tiny().eval()
    with pytest.raises(EffdlError, match="above the 0.01 ratio"):  # rank 1 of fc keeps 0.16x of its MACs
        factorize_(model, SVDConfig(ratio=0.01), selection=["fc"])
    with pytest.warns(UserWarning, match="fc .*above the 0.15 ratio"):  # rank 1: fc 0.16x, pw 0.125x
        report = factorize_(model, SVDConfig(ratio=0.15), selection=["fc", "pw"])
    assert list(report.layers) == ["pw"] and report.layers["pw"].macs_after <= 0.15 * report.layers["pw"].macs_before


def test_counted_macs_equal_a_hand_count():
    model = Tiny().eval()
    before = profile(model, (1, 3, 16, 16)).macs
    report = factorize_(model, Tucker2Config(rank=3), selection=["conv2"])
    # conv2 on 12x16x16 input -> 16x8x8: 1x1 12->3 at 16x16, 3x3 core 3->3 stride 2 at 8x8, 1x1 3->16 at 8x8
    hand = 12 * 3 * 16 * 16 + 3 * 3 * 9 * 8 * 8 + 3 * 16 * 8 * 8
    assert report.layers["conv2"].macs_after == hand
    assert report.layers["conv2"].macs_before == 16 * 12 * 9 * 8 * 8
    assert profile(model, (1, 3, 16, 16)).macs == before - 16 * 12 * 9 * 8 * 8 + hand
    model = Tiny().eval()
    factorize_(model, CPConfig(rank=5), selection=["conv2"])
    hand = 12 * 5 * 16 * 16 + 5 * 3 * 8 * 16 + 5 * 3 * 8 * 8 + 5 * 16 * 8 * 8  # 1x1, 3x1 dw (8x16), 1x3 dw, 1x1
    assert profile(model, (1, 3, 16, 16)).macs == before - 16 * 12 * 9 * 8 * 8 + hand


def test_selection_skips_what_the_method_cannot_take_and_lists_it():
    model = Tiny().eval()
    with pytest.warns(UserWarning, match="leaves 3 layer"):
        report = factorize_(model, Tucker2Config(rank=3))
    assert set(report.layers) == {"conv1", "conv2"}
    assert set(report.skipped) == {"dw", "pw", "fc"} and "depthwise" in report.skipped["dw"]


@pytest.mark.parametrize("config,selection,message", [
    (Tucker2Config(rank=13), None, "rank 13 is outside"),  # conv1 has 3 inputs, conv2 12
    (Tucker2Config(rank=2), ["dw"], "cannot take layer 'dw': it is a depthwise"),
    (SVDConfig(rank=2), ["conv9"], "matches no"),
    (CPConfig(rank=2), ["p*"], "matches no layer cp can take"),
    (SVDConfig(rank=11), ["fc"], "rank 11 is outside"),
])
def test_bad_input_is_refused_before_any_change(config, selection, message):
    model = Tiny().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(EffdlError, match=message), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        factorize_(model, config, selection=selection)
    assert model.state_dict().keys() == state.keys() and not getattr(model, "effdl_transforms", [])
    assert not any(isinstance(m, Factorized) for m in model.modules())


@pytest.mark.parametrize("make", [
    lambda: SVDConfig(energy=0), lambda: SVDConfig(energy=1.5), lambda: Tucker2Config(rank=0),
    lambda: CPConfig(energy=0.9), lambda: SVDConfig(rank=2, ratio=0.5), lambda: Tucker2Config(),
    lambda: GroupedConfig(groups=1), lambda: SVDConfig(ratio=0), lambda: CPConfig(target_macs=1.0),
])
def test_bad_configs_are_refused(make):
    with pytest.raises(EffdlError):
        make()


def test_rank_rules_energy_ratio_and_vbmf():
    torch.manual_seed(0)
    # a 40 x 60 matrix of rank 5 plus noise: VBMF finds the 5 and the noise variance
    signal = torch.randn(40, 5) @ torch.randn(5, 60)
    rank, noise = dec.vbmf_rank(signal + 0.1 * torch.randn(40, 60))
    assert rank == 5 and noise == pytest.approx(0.01, rel=0.3)
    assert dec.energy_rank(torch.tensor([3.0, 2.0, 1.0]), 1.0) == 3
    assert dec.energy_rank(torch.tensor([3.0, 2.0, 1.0]), 0.6) == 1  # 9/14 = 0.64 keeps 0.6
    assert dec.energy_rank(torch.tensor([3.0, 2.0, 1.0]), 0.69) == 2  # 9/14 < 0.69 <= 13/14
    model = Tiny().eval()
    report = factorize_(model, SpatialSVDConfig(ratio=0.5), selection=["conv2"])
    layer = report.layers["conv2"]
    assert layer.macs_after <= 0.5 * layer.macs_before
    model = Tiny().eval()
    assert factorize_(model, Tucker2Config(vbmf=True), selection=["conv2"]).ranks["conv2"][0] >= 1


@pytest.mark.parametrize("config", [
    Tucker2Config(ratio=0.4, round_to=8), Tucker2Config(energy=0.5, round_to=8), Tucker2Config(vbmf=True, round_to=8),
    Tucker2Config(target_macs=0.6, round_to=8), CPConfig(ratio=0.3, round_to=8), SpatialSVDConfig(ratio=0.5, round_to=8),
])
def test_round_to_makes_every_chosen_rank_a_multiple_or_full(config):
    """Ranks of 11 or 33 ran slower in ONNX Runtime than 8 or 32 (blocked CPU kernels): with
    round_to every rank a rule picks is a multiple of it, or the layer's whole rank."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(24, 40, 3, padding=1), nn.ReLU(), nn.Conv2d(40, 36, 3, padding=1))
    model.effdl_data = {"input_size": [24, 8, 8]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = factorize_(model, config, calibration=[torch.randn(4, 24, 8, 8)])
    assert report.layers
    for name, layer in report.layers.items():
        conv = {"0": (40, 24), "2": (36, 40)}[name]
        ranks = layer.rank if isinstance(layer.rank, list) else [layer.rank]
        limits = conv if isinstance(layer.rank, list) else [None]
        for rank, limit in zip(ranks, limits):
            assert rank % 8 == 0 or rank == limit, (name, layer.rank)
        assert layer.macs_after < layer.macs_before


def test_round_to_skips_a_layer_no_multiple_makes_cheaper_and_old_configs_read():
    from effdl.core.configs import config_from_dict, config_to_dict

    model = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 32, 3, padding=1))
    model.effdl_data = {"input_size": [6, 8, 8]}
    with pytest.warns(UserWarning, match="leaves 1 layer"):
        report = factorize_(model, Tucker2Config(target_macs=0.8, round_to=8))
    assert list(report.layers) == ["2"] and "multiple of 8" in report.skipped["0"]
    assert profile(model, (1, 6, 8, 8)).macs <= 0.8 * 64 * 9 * (6 * 6 + 6 * 32)  # the skipped layer's MACs counted
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1))
    model.effdl_data = {"input_size": [8, 8, 8]}
    with pytest.warns(UserWarning, match="leaves 1 layer"):
        report = factorize_(model, Tucker2Config(ratio=0.5, round_to=8))  # (8, 8) on layer 0 keeps 0.67x
    assert list(report.layers) == ["2"] and "above the 0.5 ratio" in report.skipped["0"]
    assert report.layers["2"].macs_after <= 0.5 * report.layers["2"].macs_before
    with pytest.raises(EffdlError, match="no selected layer would get cheaper.*above the 0.1 ratio"):
        factorize_(model, Tucker2Config(ratio=0.1, round_to=8), selection=["0"])
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.Flatten(), nn.Linear(1024, 2))
    model.effdl_data = {"input_size": [8, 8, 8]}
    with pytest.raises(EffdlError, match="e.g. '0': .*above the 0.1 ratio"):  # not the Linear skipped by selection
        factorize_(model, Tucker2Config(ratio=0.1, round_to=8))
    assert config_to_dict(Tucker2Config(ratio=0.5, round_to=8))["version"] == 2
    assert config_from_dict({"type": "factorize.tucker2", "version": 1, "ratio": 0.5}) == Tucker2Config(ratio=0.5)


def test_mac_target_scans_and_allocates():
    model = Tiny().eval()
    total = profile(model, (1, 3, 16, 16)).macs
    calibration = [torch.randn(8, 3, 16, 16)]
    scan = factorize_sensitivity(model, SpatialSVDConfig(ratio=0.5), calibration=calibration)
    assert scan.layers() == ["conv1", "conv2"] and len(scan.points) == 18
    report = factorize_(model, SpatialSVDConfig(target_macs=0.6), calibration=calibration)
    assert profile(model, (1, 3, 16, 16)).macs <= 0.6 * total and report.scan is not None
    with pytest.raises(EffdlError, match="cannot reach"):
        factorize_(Tiny().eval(), SpatialSVDConfig(target_macs=0.01), calibration=calibration)


def test_a_mac_target_is_used_not_undershot_when_every_layer_scores_alike():
    """Flat scores (a near-chance model) made every layer take its cheapest scanned ratio: a 0.6
    target kept 0.36x. The spare budget goes back to the layers, and the result stays within it."""
    calibration = [torch.randn(8, 3, 16, 16)]
    total = profile(Tiny().eval(), (1, 3, 16, 16)).macs
    cheapest = Tiny().eval()
    factorize_(cheapest, SpatialSVDConfig(ratio=min(SCAN_RATIOS)), calibration=calibration)
    model = Tiny().eval()
    factorize_(model, SpatialSVDConfig(target_macs=0.6), calibration=calibration, accuracy=lambda m: 0.5)
    kept = profile(model, (1, 3, 16, 16)).macs
    assert profile(cheapest, (1, 3, 16, 16)).macs < kept <= 0.6 * total


def test_save_reload_onnx_and_quantization(tmp_path):
    from effdl.compress.quantize import FakeQuantConfig, quantize_
    from effdl.deploy.onnx import export_verified

    from effdl.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet20", width=0.25).eval()
    factorize_(model, CPConfig(rank=4), selection=["layers.1.0.conv1"])
    factorize_(model, SVDConfig(rank=4), selection=["fc"])
    x = torch.randn(2, 3, 32, 32)
    save_model(tmp_path / "f.safetensors", model)
    loaded, _ = load_model(tmp_path / "f.safetensors")
    assert isinstance(loaded.layers[1][0].conv1, Factorized) and loaded.layers[1][0].conv1[1].groups == 4
    assert torch.equal(loaded.eval()(x), model(x))
    _, check = export_verified(loaded, tmp_path / "f.onnx")
    assert check.count >= 1 and check.max_abs_diff < 1e-3  # export_verified raises on a mismatch
    quantize_(loaded, FakeQuantConfig(weight_bits=8, act_bits=8))
    assert _rel(loaded(x), model(x)) < 0.1
    save_model(tmp_path / "q.safetensors", loaded)
    again, _ = load_model(tmp_path / "q.safetensors")
    assert torch.allclose(again.eval()(x), loaded(x), atol=1e-6)


def test_torchvision_resnet18():
    from effdl.models import create_model

    model = create_model("tv:resnet18", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    before = profile(model, (1, 3, 32, 32)).macs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = factorize_(model, Tucker2Config(ratio=0.5), selection={"include": ["layer1.*"]})
    assert len(report.layers) == 4 and profile(model, (1, 3, 32, 32)).macs < before
    assert model(x).shape == (2, 10)


def test_cli_on_cifar(cifar10_root, tmp_path, monkeypatch, capsys):
    from effdl.cli import main
    from effdl.models import create_model

    monkeypatch.setenv("EFFDL_DATA", str(cifar10_root))
    torch.manual_seed(0)
    ckpt = tmp_path / "m.safetensors"
    save_model(ckpt, create_model("resnet20", width=0.25),
               config={"dataset": "cifar10", "model": "resnet20", "model_kwargs": {"width": 0.25}})
    out = tmp_path / "run"
    args = ["factorize", str(ckpt), "--method", "tucker", "--ratio", "0.5", "--exclude", "conv1", "--epochs", "1",
            "--batch-size", "64", "--data", "cifar10", "--train-limit", "256", "--test-limit", "256", "--device",
            "cpu", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    d = summary["details"]
    assert summary["kind"] == "factorize" and d["macs_after"] < d["macs_before"] and d["layers"]
    assert all(layer["macs_after"] <= 0.5 * layer["macs_before"] for layer in d["layers"].values())
    model, _ = load_model(out / "best.safetensors")
    assert profile(model).macs == d["macs_after"]
    assert main(args) == 2  # an existing run is refused
    assert main([*args[:4], "--rank", "99", *args[6:], "--overwrite"]) == 2
    assert "rank 99 is outside" in capsys.readouterr().err
    assert main([*args[:4], "--method", "depthwise", "--round-to", "8", *args[6:], "--overwrite"]) == 2
    assert "has no rank: drop --round-to" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    # an option the method does not read, set, is refused (it changed nothing before)
    (["--method", "tucker", "--ratio", "0.5", "--groups", "2"],
     "--groups (groups) is an option of --method grouped; --method tucker does not use it"),
    (["--method", "depthwise", "--groups", "2"], "--method depthwise does not use it"),
    (["--method", "depthwise", "--scan-images", "100"],
     "--scan-images (scan_images) is an option of --method svd, tucker, cp, spatial-svd; --method depthwise"),
    # read by the method, but only together with another option
    (["--method", "svd", "--ratio", "0.5", "--scan-images", "100"], "scan of --scan or --target-macs: give one"),
    (["--method", "svd", "--ratio", "0.5", "--distill", "0.5"], "--distill acts during fine-tuning: give --epochs"),
    (["--method", "svd", "--ratio", "0.5", "--batch-size", "64"],
     "--batch-size (batch_size) is a setting of the fine-tune; without --epochs there is none"),
    (["--method", "svd", "--ratio", "0.5", "--epochs", "1", "--distill-method", "dkd"],
     "--distill-method (distill_method) shapes the --distill term"),
    (["--method", "tucker", "--ratio", "0.5", "--epochs", "1", "--distill", "0.5", "--distill-method", "at",
      "--distill-temperature", "2"],
     "--distill-temperature (distill_temperature) is an option of --distill-method kd, kd-std, dkd; "
     "--distill-method at does not use it"),
])
def test_cli_refuses_an_option_the_method_does_not_read(tmp_path, capsys, args, message):
    from effdl.cli import main
    from effdl.models import create_model

    ckpt = tmp_path / "m.safetensors"
    save_model(ckpt, create_model("resnet20", width=0.25), config={"dataset": "synthetic", "model": "resnet20",
                                                                     "model_kwargs": {"width": 0.25}})
    assert main(["factorize", str(ckpt), "--device", "cpu", "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
