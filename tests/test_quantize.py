"""Quantization: distinct values per channel, STE gradients, LSQ/PACT learning, binary/ternary/k-means
behaviour, BatchNorm folding, calibration, checkpoint round-trips and bad input."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torchvision
from torch import nn

from effdl.checkpoint import load_model, save_model
from effdl.compress.quantize import (
    BinaryConnectConfig,
    FakeQuantConfig,
    Float16Config,
    Int8StaticConfig,
    Int8WeightOnlyConfig,
    KMeansConfig,
    QuantConv2d,
    QuantizationCallback,
    TernaryConfig,
    XnorConfig,
    calibrate,
    calibration_images,
    fold_batchnorm,
    quantize_,
    quantized_layers,
    verify_model_bits,
)
from effdl.compress.quantize.layers import SharedInputQuant
from effdl.compress.quantize.quantizers import fake_quantize_float
from effdl.data import load_dataset
from effdl.errors import EffdlError
from effdl.measure.bits import act_bits, verify_weight_bits, weight_bits
from effdl.measure.counting import profile
from effdl.models import create_model


def tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet20", width=0.25).eval()


def randomize_batchnorm(model: nn.Module) -> None:
    """Non-trivial BN statistics, so folding has something to fold."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def max_distinct_per_channel(w: torch.Tensor, per_channel: bool = True) -> int:
    rows = w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)
    return max(int(torch.unique(r).numel()) for r in rows)


X = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))  # small: the CPU is shared


@pytest.mark.parametrize(
    ("config", "bits"),
    [
        (FakeQuantConfig(weight_bits=4, act_bits=4, method="lsq", first_last_bits=None), 4),
        (FakeQuantConfig(weight_bits=2, act_bits=2, method="lsq", first_last_bits=None), 2),
        (FakeQuantConfig(weight_bits=3, act_bits=3, method="minmax", first_last_bits=None), 3),
        (FakeQuantConfig(weight_bits=2, act_bits=2, method="dorefa", first_last_bits=None), 2),
        (FakeQuantConfig(weight_bits=3, act_bits=3, method="pact", first_last_bits=None), 3),
        (FakeQuantConfig(weight_bits=1, act_bits=1, method="lsq", first_last_bits=None), 1),
        (BinaryConnectConfig(), 1),
        (XnorConfig(), 1),
        (TernaryConfig(), 2),
        (KMeansConfig(3), 3),
        (Int8WeightOnlyConfig(), 8),
    ],
)
def test_quantized_weights_hold_at_most_2_to_the_b_values(config, bits):
    model = tiny_resnet()
    quantize_(model, config)
    model.train()
    model(X)  # initialises lazy activation quantizers and running ranges
    layers = quantized_layers(model)
    assert len(layers) == 22  # every conv and the classifier
    for name, layer in layers.items():
        assert layer.weight_bits == bits
        w = layer.quantized_weight().detach()
        assert max_distinct_per_channel(w, layer.weight_per_channel) <= 2**bits
        verify_weight_bits(layer, name)
        assert weight_bits(layer) == bits
    verify_model_bits(model)


def test_verify_weight_bits_catches_a_layer_that_lies():
    layer = quantize_(nn.Sequential(nn.Conv2d(3, 4, 3)), FakeQuantConfig(weight_bits=2, act_bits=None))[0]
    layer.weight_quantizer.bits = 1  # lie: 2-bit minmax weights hold 3 values per channel
    with pytest.raises(EffdlError, match="distinct values"):
        verify_weight_bits(layer, "liar")


def test_ste_gradients_reach_weights_and_inputs():
    model = tiny_resnet().train()
    quantize_(model, FakeQuantConfig(weight_bits=2, act_bits=2, method="minmax", first_last_bits=None))
    x = X.clone().requires_grad_(True)
    model(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, layer in quantized_layers(model).items():
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0, name


def test_lsq_step_sizes_receive_gradients_and_learn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4))
    quantize_(model, FakeQuantConfig(weight_bits=3, act_bits=3, method="lsq", first_last_bits=None))
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 4, (32,))
    model(x)
    conv, fc = model[0], model[3]
    steps_before = [conv.weight_quantizer.step.clone(), fc.act_quantizer.step.clone()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(5):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        assert conv.weight_quantizer.step.grad.abs().sum() > 0
        assert fc.act_quantizer.step.grad.abs() > 0
        optimizer.step()
    assert not torch.equal(conv.weight_quantizer.step, steps_before[0])
    assert not torch.equal(fc.act_quantizer.step, steps_before[1])
    # activations after ReLU are unsigned: the grid is 0..7 times the step
    assert not bool(fc.act_quantizer.signed)
    q = fc.act_quantizer(torch.relu(torch.randn(1000))).detach() / fc.act_quantizer.step.detach()
    # (q is x_hat / step in float: 7 may come back as 7.0000005, CPU by CPU)
    assert torch.allclose(q, q.round(), atol=1e-4) and q.round().min() >= 0 and q.round().max() <= 7


@pytest.mark.parametrize("bits", [2, 4])
def test_lsq_steps_start_where_the_quantization_error_is_least(bits):
    from effdl.compress.quantize.quantizers import LSQAct, LSQWeight

    def error(x, step, qn, qp):  # per row
        return (torch.round((x / step).clamp(-qn, qp)) * step - x).pow(2).mean(dim=-1)

    torch.manual_seed(0)
    w = torch.randn(8, 3, 3, 3) * torch.linspace(0.1, 2.0, 8).view(-1, 1, 1, 1)
    wq = LSQWeight(bits, w)
    rows, step = w.flatten(1), wq.step.detach().unsqueeze(1)
    paper_rule = 2 * rows.abs().mean(1, keepdim=True) / max(wq.qp, 1) ** 0.5  # LSQ's initialisation
    best = error(rows, step, wq.qn, wq.qp)
    for other in (paper_rule, rows.abs().amax(1, keepdim=True) / max(wq.qp, 1), 0.9 * step, 1.1 * step):
        assert (best <= error(rows, other, wq.qn, wq.qp) + 1e-9).all()

    x = torch.relu(torch.randn(4, 16, 8, 8))
    act = LSQAct(bits)
    act(x)  # the first batch initialises the step
    qn, qp = act.levels()
    s = act.step.detach()
    best = error(x.flatten(), s, qn, qp)
    for other in (2 * x.abs().mean() / qp**0.5, x.max() / qp, 0.9 * s, 1.1 * s):
        assert best <= error(x.flatten(), other, qn, qp) + 1e-9


@pytest.mark.parametrize("method", ["lsq", "pact", "dorefa"])
def test_learned_activation_quantizers_trace_as_one_graph_for_torch_compile(method):
    # Reading a flag buffer as a bool splits the compiled graph once per layer (several times slower QAT).
    model = tiny_resnet()
    quantize_(model, FakeQuantConfig(weight_bits=2, act_bits=2, method=method, first_last_bits=8))
    x = torch.randn(64, 3, 16, 16)
    calibrate(model, x)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model.train())(x)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]


def test_activation_grid_follows_a_loaded_state_and_recalibration():
    source, target = nn.Sequential(nn.Linear(8, 4)), nn.Sequential(nn.Linear(8, 4))
    for model in (source, target):
        quantize_(model, FakeQuantConfig(weight_bits=4, act_bits=4, method="lsq", first_last_bits=None))
    source(torch.randn(64, 8))  # signed input: grid -8..7
    target(torch.rand(64, 8))  # unsigned input: grid 0..15
    assert target[0].act_quantizer.levels() == (0, 15)
    target.load_state_dict(source.state_dict())
    assert target[0].act_quantizer.levels() == (8, 7)
    target(torch.rand(64, 8))
    assert target[0].act_quantizer.levels() == (8, 7)  # loaded as initialised: not re-initialised
    calibrate(target, torch.rand(64, 8))  # calibration initialises again from its images
    assert target[0].act_quantizer.levels() == (0, 15)


def test_pact_clipping_level_learns_from_clipped_activations():
    model = nn.Sequential(nn.ReLU(), nn.Linear(16, 2))
    quantize_(model, FakeQuantConfig(weight_bits=4, act_bits=4, method="pact", first_last_bits=None))
    act = model[1].act_quantizer
    x = torch.randn(64, 16) * 3
    model(x)
    assert act.alpha.item() < float(x.relu().max())  # initialised below the largest value
    model(x).sum().backward()
    assert act.alpha.grad is not None and act.alpha.grad != 0
    out = act(x.relu()).detach()
    assert out.max() <= act.alpha.item() + 1e-6 and torch.unique(out).numel() <= 16


def test_binaryconnect_weights_are_plus_minus_one_and_latent_copy_is_clipped():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    with torch.no_grad():
        model[1].weight.mul_(10)
    quantize_(model, BinaryConnectConfig())
    layer = model[1]
    assert layer.weight.abs().max() <= 1  # clipped at conversion
    assert set(torch.unique(layer.quantized_weight()).tolist()) <= {-1.0, 1.0}
    optimizer = torch.optim.SGD(model.parameters(), lr=10.0)
    model(torch.randn(8, 3, 2, 2)).sum().backward()
    optimizer.step()
    assert layer.weight.abs().max() > 1  # a big step pushes the latent weights out ...
    QuantizationCallback().on_after_step(type("T", (), {"model": model})())
    assert layer.weight.abs().max() <= 1  # ... and the callback clips them back


def test_stochastic_binaryconnect_samples_in_training_and_is_deterministic_in_eval():
    torch.manual_seed(0)
    layer = quantize_(nn.Sequential(nn.Linear(200, 50)), BinaryConnectConfig(stochastic=True))[0].train()
    a, b = layer.quantized_weight(), layer.quantized_weight()
    assert not torch.equal(a, b)
    assert set(torch.unique(a).tolist()) <= {-1.0, 1.0}
    layer.eval()
    assert torch.equal(layer.quantized_weight(), torch.where(layer.weight >= 0, 1.0, -1.0))


def test_xnor_scale_is_per_channel_mean_abs_weight_and_activations_are_binary():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 6, 3))
    quantize_(model, XnorConfig())
    layer = model[1]
    w = layer.weight.detach()
    expected = torch.where(w >= 0, 1.0, -1.0) * w.abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(layer.quantized_weight(), expected)
    assert layer.weight_per_channel and layer.act_bits == 1
    assert model[0].act_quantizer is None  # the image is never binarised
    assert set(torch.unique(layer.act_quantizer(torch.randn(100))).tolist()) == {-1.0, 1.0}


def test_ternary_weights_have_three_values_including_zero():
    model = nn.Sequential(nn.Conv2d(3, 8, 3))
    quantize_(model, TernaryConfig(threshold=0.7))
    w = model[0].quantized_weight().detach()
    for row in w.reshape(8, -1):
        values = torch.unique(row)
        assert values.numel() == 3 and 0.0 in values.tolist()
        assert torch.isclose(values[0], -values[2])


def test_kmeans_sharing_and_centroid_finetuning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 3))
    quantize_(model, KMeansConfig(bits=2))
    conv = model[0]
    assert torch.unique(conv.quantized_weight()).numel() <= 4
    labels_before, centroids_before = conv.weight_quantizer.labels.clone(), conv.weight_quantizer.centroids.clone()
    x = torch.randn(16, 3, 8, 8)
    # The centroid gradient is the sum of the gradients of the weights sharing it.
    shared = conv.quantized_weight().detach().requires_grad_(True)
    out = nn.functional.conv2d(x, shared, conv.bias)
    model[3](model[2](model[1](out))).square().sum().backward()
    expected = torch.zeros(4).index_add_(0, labels_before.long().flatten(), shared.grad.flatten())
    model.zero_grad()
    model(x).square().sum().backward()
    assert torch.allclose(conv.weight_quantizer.centroids.grad, expected, atol=1e-5)
    assert conv.weight.grad is None  # the float weight no longer trains
    torch.optim.SGD(model.parameters(), lr=0.01).step()
    assert not torch.equal(conv.weight_quantizer.centroids, centroids_before)
    assert torch.equal(conv.weight_quantizer.labels, labels_before)
    assert torch.unique(conv.quantized_weight()).numel() <= 4
    verify_model_bits(model)


def test_fold_batchnorm_preserves_outputs_for_our_resnet_and_torchvision():
    for model in (tiny_resnet(), torchvision.models.resnet18(num_classes=10).eval()):
        randomize_batchnorm(model)
        x = X[:2]
        with torch.no_grad():
            before = model(x)
            fold_batchnorm(model)
            after = model(x)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert torch.allclose(before, after, atol=1e-4), (before - after).abs().max()


def test_fold_batchnorm_leaves_bn_that_does_not_follow_a_conv():
    class PreActBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(3)
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(self.bn(x))

    model = PreActBlock().eval()
    fold_batchnorm(model)
    assert isinstance(model.bn, nn.BatchNorm2d)


def test_int8_static_close_to_float_and_calibration_methods_differ():
    model = tiny_resnet()
    randomize_batchnorm(model)
    data = load_dataset("synthetic")
    images = nn.functional.avg_pool2d(calibration_images(data, 64), 2)
    with torch.no_grad():
        reference = model(images[:32])
    ranges = {}
    for method in ("minmax", "percentile", "mse"):
        q = create_model("resnet20", width=0.25).eval()
        q.load_state_dict(model.state_dict())
        fold_batchnorm(q)
        quantize_(q, Int8StaticConfig(calibration=method, percentile=99.0))
        calibrate(q, images)
        with torch.no_grad():
            out = q(images[:32])
        assert (out - reference).abs().max() < 0.1 * reference.abs().max()
        act = q.layers[1][0].conv1.act_quantizer
        ranges[method] = float(act.hi)
        assert act_bits(q.layers[1][0].conv1) == 8 and weight_bits(q.layers[1][0].conv1) == 8
    assert ranges["percentile"] < ranges["minmax"] and ranges["mse"] <= ranges["minmax"]


def test_mixed_precision_first_last_and_overrides():
    model = tiny_resnet()
    quantize_(model, FakeQuantConfig(weight_bits=2, act_bits=4, overrides={"layers.1.*": 3, "layers.2.0.conv1": [5, 6]}))
    layers = quantized_layers(model)
    assert (layers["conv1"].weight_bits, layers["conv1"].act_bits) == (8, 8)
    assert (layers["fc"].weight_bits, layers["fc"].act_bits) == (8, 8)
    assert (layers["layers.0.0.conv1"].weight_bits, layers["layers.0.0.conv1"].act_bits) == (2, 4)
    assert layers["layers.1.0.shortcut.0"].weight_bits == 3
    assert (layers["layers.2.0.conv1"].weight_bits, layers["layers.2.0.conv1"].act_bits) == (5, 6)


def test_an_override_that_names_no_layer_is_refused_before_any_change():
    model = tiny_resnet()
    with pytest.raises(EffdlError, match=r"'layer\.1\.\*' matches no quantizable layer"):
        quantize_(model, FakeQuantConfig(weight_bits=2, overrides={"layer.1.*": 3}))
    assert not quantized_layers(model)


def test_filter_fn_restricts_layers():
    model = tiny_resnet()
    quantize_(model, TernaryConfig(), filter_fn=lambda module, name: name.startswith("layers.0"))
    assert set(quantized_layers(model)) == {f"layers.0.{b}.conv{i}" for b in range(3) for i in (1, 2)}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_conversion(dtype, tmp_path):
    model = tiny_resnet()
    with torch.no_grad():
        reference = model(X)
    quantize_(model, Float16Config(dtype))
    with torch.no_grad():
        out = model(X)
    assert out.dtype == getattr(torch, dtype)
    assert weight_bits(model.conv1) == 16 and act_bits(model.conv1) == 16
    assert torch.allclose(out.float(), reference, atol=0.05 * reference.abs().max())
    save_model(tmp_path / "half.safetensors", model)
    loaded, _ = load_model(tmp_path / "half.safetensors")
    with torch.no_grad():
        assert torch.equal(loaded(X), out)


@pytest.mark.parametrize(
    "config",
    [
        FakeQuantConfig(weight_bits=4, act_bits=4, method="lsq"),
        FakeQuantConfig(weight_bits=3, act_bits=3, method="pact"),
        FakeQuantConfig(weight_bits=4, act_bits=8, method="minmax"),
        KMeansConfig(4),
        XnorConfig(),
        Int8StaticConfig(calibration="mse"),
    ],
)
def test_checkpoint_round_trip_gives_identical_outputs(config, tmp_path):
    model = tiny_resnet()
    randomize_batchnorm(model)
    if isinstance(config, Int8StaticConfig):
        fold_batchnorm(model)
    quantize_(model, config)
    if isinstance(config, Int8StaticConfig):
        calibrate(model, torch.randn(64, 3, 16, 16))
    model.train()
    model(X)  # lazy initialisation / running ranges
    model.eval()
    with torch.no_grad():
        expected = model(X)
    save_model(tmp_path / "q.safetensors", model)
    loaded, _ = load_model(tmp_path / "q.safetensors")
    assert isinstance(loaded.conv1, QuantConv2d)
    with torch.no_grad():
        assert torch.equal(loaded(X), expected)
    verify_model_bits(loaded)


def test_torchvision_resnet18_int8_at_32x32():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    randomize_batchnorm(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        fold_batchnorm(model)
        quantize_(model, Int8StaticConfig())
        calibrate(model, torch.randn(64, 3, 32, 32))
        out = model(x)
    assert len(quantized_layers(model)) == 21
    assert out.shape == (2, 10)
    assert torch.allclose(out, reference, atol=0.1 * reference.abs().max())


def test_bad_inputs_raise_clear_errors():
    for bad in (0, 9, 16, -1):
        with pytest.raises(EffdlError, match="from 1 to 8"):
            FakeQuantConfig(weight_bits=bad)
    with pytest.raises(EffdlError, match="from 1 to 8"):
        FakeQuantConfig(act_bits=12)
    with pytest.raises(EffdlError, match="from 1 to 8"):
        KMeansConfig(0)
    with pytest.raises(EffdlError, match="unknown QAT method"):
        FakeQuantConfig(method="magic")
    with pytest.raises(EffdlError, match="unknown calibration method"):
        Int8StaticConfig(calibration="entropy")
    model = quantize_(tiny_resnet(), Int8StaticConfig())
    with pytest.raises(EffdlError, match="already quantized"):
        quantize_(model, TernaryConfig())
    with pytest.raises(EffdlError, match="not calibrated"):
        model(X)
    with pytest.raises(EffdlError, match="at least 64 images"):
        calibrate(model, torch.randn(10, 3, 8, 8))
    with pytest.raises(EffdlError, match="no activation quantizers"):
        calibrate(quantize_(tiny_resnet(), TernaryConfig()), torch.randn(100, 3, 8, 8))
    with pytest.raises(EffdlError, match="already quantized"):
        quantize_(quantize_(tiny_resnet(), Float16Config()), Int8StaticConfig())
    with pytest.raises(EffdlError, match="no Conv2d or Linear"):
        quantize_(nn.Sequential(nn.ReLU()), TernaryConfig())


def test_unsupported_layers_are_skipped_with_a_listed_warning():
    model = nn.Sequential(nn.Conv1d(3, 4, 3), nn.Flatten(), nn.Linear(24, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize_(model, TernaryConfig())
    messages = [str(w.message) for w in caught]
    assert any("0 (Conv1d)" in m and "unsupported" in m for m in messages)
    assert type(model[0]) is nn.Conv1d and set(quantized_layers(model)) == {"2"}


def test_float_fake_quantize_is_bit_exact_with_pytorchs_ops():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4096, generator=g) * 2
    x[:64] = (torch.arange(64) - 32 + 0.5) * 0.1  # exact ties: round half to even on both sides
    got = fake_quantize_float(x, torch.tensor(0.1), torch.tensor(3.0), 0, 15)
    assert torch.equal(got, torch.fake_quantize_per_tensor_affine(x, 0.1, 3, 0, 15))
    w = torch.randn(8, 4, 3, 3, generator=g)
    scale = torch.rand(8, generator=g) + 0.05
    got = fake_quantize_float(w, scale.view(-1, 1, 1, 1), torch.zeros(8, 1, 1, 1), -4, 3)
    assert torch.equal(got, torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(8, dtype=torch.int32), 0, -4, 3))


def test_int8_static_quantizes_the_outputs_that_feed_residual_adds(tmp_path):
    model = tiny_resnet()
    randomize_batchnorm(model)
    fold_batchnorm(model)
    quantize_(model, Int8StaticConfig(calibration="percentile"))
    with_output = {name for name, layer in quantized_layers(model).items() if layer.output_quantizer is not None}
    blocks = [f"layers.{s}.{b}" for s in range(3) for b in range(3)]
    # The stem and each block's second conv / projection feed an Add; conv1 feeds conv2 through a
    # ReLU (its rounding is conv2's input quantizer's); the logits stay float.
    expected = {"conv1"} | {f"{b}.conv2" for b in blocks} | {f"layers.{s}.0.shortcut.0" for s in (1, 2)}
    assert with_output == expected
    assert all(model.get_submodule(n).output_quantizer.method == "percentile" for n in with_output)
    calibrate(model, torch.randn(64, 3, 16, 16))
    with torch.no_grad():
        expected_out = model(X)
        pre_add = model.layers[0][0].conv2(model.layers[0][0].relu1(model.layers[0][0].conv1(torch.rand(2, 4, 8, 8))))
    scale, zero_point = model.layers[0][0].conv2.output_quantizer.qparams()
    assert torch.allclose(torch.round(pre_add / scale), pre_add / scale, atol=1e-3)  # on the uint8 grid
    save_model(tmp_path / "q.safetensors", model)
    loaded, _ = load_model(tmp_path / "q.safetensors")
    with torch.no_grad():
        assert torch.equal(loaded(X), expected_out)
    unquantized_outputs = quantize_(tiny_resnet(), Int8StaticConfig(quantize_outputs=False))
    assert all(layer.output_quantizer is None for layer in quantized_layers(unquantized_outputs).values())


def test_int8_static_rounds_a_residual_block_input_where_it_is_made_for_the_shortcut_too(tmp_path):
    model = tiny_resnet()
    randomize_batchnorm(model)
    fold_batchnorm(model)
    quantize_(model, Int8StaticConfig())
    shared = {name: m.layer for name, m in model.named_modules() if isinstance(m, SharedInputQuant)}
    # the stem's ReLU and each block's final ReLU whose output goes to an identity-shortcut block
    # (the projection blocks' inputs are read by two convolutions and no float op: left alone)
    assert set(shared) == {"relu", "layers.0.0.relu2", "layers.0.1.relu2", "layers.1.0.relu2", "layers.1.1.relu2",
                           "layers.2.0.relu2", "layers.2.1.relu2"}
    assert shared["layers.0.0.relu2"] is model.layers[0][1].conv1
    calibrate(model, torch.randn(64, 3, 16, 16))
    seen = {}
    handle = model.layers[0][1].register_forward_pre_hook(lambda m, args: seen.update(block_input=args[0]))
    with torch.no_grad():
        expected = model(X)
    handle.remove()
    scale, zero_point = model.layers[0][1].conv1.act_quantizer.qparams()
    steps = seen["block_input"] / scale  # what the shortcut adds is on the reading conv's grid
    assert torch.allclose(steps, torch.round(steps), atol=1e-3)
    # the quantizer lives in the conv only: no new state_dict keys, and a round trip is exact
    plain = tiny_resnet()
    fold_batchnorm(plain)
    quantize_(plain, Int8StaticConfig(quantize_outputs=False))
    assert set(model.state_dict()) == set(plain.state_dict()) | {
        k for k in model.state_dict() if "output_quantizer" in k}
    save_model(tmp_path / "q.safetensors", model)
    loaded, _ = load_model(tmp_path / "q.safetensors")
    assert isinstance(loaded.layers[0][0].relu2, SharedInputQuant)
    with torch.no_grad():
        assert torch.equal(loaded(X), expected)
    # counted as the ReLU it wraps, under its name: the rounding is the runtime's quantize, no new operation
    calibrate(plain, torch.randn(64, 3, 16, 16))
    plain_records = [(r.name, r.kind, r.macs) for r in profile(plain).layers]
    assert [(r.name, r.kind, r.macs) for r in profile(model).layers] == plain_records
    copied = copy.deepcopy(model)  # the wrapper follows the copy's conv, not the original's
    assert copied.layers[0][0].relu2.layer is copied.layers[0][1].conv1
    # torchvision's BasicBlock calls one ReLU twice: no block output is wrapped (only the stem's
    # max-pool, which layer1.0's conv and shortcut read)
    resnet18 = torchvision.models.resnet18(num_classes=10).eval()
    quantize_(resnet18, Int8StaticConfig())
    assert [n for n, m in resnet18.named_modules() if isinstance(m, SharedInputQuant)] == ["maxpool"]


def test_calibration_takes_every_training_image_when_fewer_than_asked_and_says_so():
    from effdl.compress.quantize import calibration_images

    data = load_dataset("synthetic")
    available = len(data.train_labels)
    with pytest.warns(UserWarning, match=f"all {available} training images \\(fewer than the {available + 5} calibration images\\)"):
        images = calibration_images(data, available + 5)
    assert len(images) == available


def test_output_analysis_looks_through_relu_pool_and_flatten_only():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2),  # -> conv: no output quantizer
        nn.Conv2d(4, 4, 3), nn.Sigmoid(),                # -> a float op: output quantizer
        nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4 * 8 * 8, 5),
    ).eval()
    quantize_(model, Int8StaticConfig())
    layers = quantized_layers(model)
    assert {name for name, layer in layers.items() if layer.output_quantizer is not None} == {"3"}


def test_output_quantizers_only_where_activations_lie_on_an_integer_grid():
    """Output and shared-input rounding exist for integer inference: with sign or DoReFa activations
    (which int8 export refuses) they would only destroy information (a sign on a ReLU is constant)."""
    from effdl.compress.quantize.layers import OutputQuantAfter

    def wrappers(config) -> int:
        model = quantize_(create_model("resnet20", width=0.25), config)
        return sum(isinstance(m, (OutputQuantAfter, SharedInputQuant)) for m in model.modules())

    assert wrappers(FakeQuantConfig(weight_bits=4, act_bits=4, method="lsq")) > 12
    assert wrappers(FakeQuantConfig(weight_bits=4, act_bits=4, method="dorefa")) == 0
    assert wrappers(FakeQuantConfig(weight_bits=1, act_bits=1, first_last_bits=None)) == 0


def test_eval_bias_rounding_broadcasts_over_a_linear_layers_last_dimension():
    """A Linear's features are its output's last dimension (transformer MLPs, [B, T, C] inputs)."""
    torch.manual_seed(0)
    model = quantize_(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)),
                      FakeQuantConfig(weight_bits=4, act_bits=4, first_last_bits=None))
    x = torch.randn(2, 5, 8)
    model.train()
    model(x)  # initialises the LSQ steps
    model.eval()
    from effdl.compress.quantize.grids import integer_bias_shift

    assert integer_bias_shift(model[0]).abs().max() > 0  # there is a rounding to broadcast
    with torch.no_grad():
        tokens = model(x)
        one_by_one = torch.stack([model(x[:, t]) for t in range(5)], 1)
    assert tokens.shape == (2, 5, 4) and torch.allclose(tokens, one_by_one, atol=1e-6)


def test_a_qat_models_batchnorm_parameters_are_counted_through_their_output_wrapper():
    from effdl.compress.quantize.layers import OutputQuantAfter

    model = quantize_(create_model("resnet20", width=0.25), FakeQuantConfig(weight_bits=4, act_bits=4))
    assert any(isinstance(m, OutputQuantAfter) for m in model.modules())
    model.train()
    model(torch.randn(8, 3, 32, 32))
    model.eval()
    result = profile(model)
    assert not result.warnings  # bn1.module.weight was "used by no counted operation"
    assert all(p.layer is not None for p in result.parameters)


def test_a_qat_models_eval_is_one_graph_for_torch_compile():
    """The integer bias rounding runs in every eval forward: tensor operations only, no host sync
    (a float() per layer split the graph twice per layer)."""
    model = quantize_(create_model("tiny_cnn"), FakeQuantConfig(weight_bits=4, act_bits=4))
    model.train()
    model(torch.randn(8, 3, 32, 32))
    model.eval()
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32))
    assert explained.graph_break_count == 0, explained.break_reasons

