"""The model zoo: every model builds and runs on CIFAR-sized and larger or non-square input, with the published sizes."""

from __future__ import annotations

import inspect
import time

import pytest
import torch
from torch import nn

from effdl.errors import EffdlError
from effdl.models import count_parameters, create_model, describe_models, list_models, model_spec
from effdl.models.layers import SqueezeExcite
from effdl.models.registry import model_factory
from effdl.models.shufflenet import ChannelShuffle
from effdl.models.squeezenet import Fire

# Variants of the big generic factories that keep the forward test quick.
SMALL_KWARGS = {"wrn": {"depth": 16, "widen": 2}, "densenet_bc": {"depth": 40, "growth": 12}}


pytestmark = pytest.mark.usefixtures("one_thread")


def meta_params(name: str, num_classes: int = 10, **kwargs) -> int:
    with torch.device("meta"):
        return count_parameters(create_model(name, num_classes=num_classes, **kwargs))


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if not list(m.children())]


@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_on_cifar_input_and_uses_each_layer_once(name):
    model = create_model(name, num_classes=7, **SMALL_KWARGS.get(name, {})).eval()
    calls = {id(m): 0 for _, m in leaf_modules(model)}

    def count(module, _inputs, _output):
        calls[id(module)] += 1

    for _, m in leaf_modules(model):
        m.register_forward_hook(count)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    # One module instance per use (activations included) and no dead layers: what counting,
    # pruning and quantization rely on.
    wrong = [n for n, m in leaf_modules(model) if calls[id(m)] != 1]
    assert not wrong, f"modules not called exactly once: {wrong[:5]}"
    assert model_spec(model)["name"] == name


# Width multipliers for the models too slow at full width on a 2-core CPU (about 1 s each there);
# widths change channel counts only, not how a model handles the input's height and width.
NARROW_FOR_SIZES = {n: 0.25 for n in ("wrn_28_10", "wrn_40_4", "resnet34", "resnet50", "preact_resnet34",
                                      "densenet121", "resnext29", "resnext29_2x64d", "resnext29_32x4d")}


@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_at_any_input_size_from_32(name):
    kwargs = {**SMALL_KWARGS.get(name, {}), "width": NARROW_FOR_SIZES.get(name, 1.0)}
    for num_classes in (10, 200):
        model = create_model(name, num_classes=num_classes, **kwargs).eval()
        with torch.no_grad():
            for height, width in ((32, 32), (64, 64), (48, 80)):
                out = model(torch.randn(2, 3, height, width))
                assert out.shape == (2, num_classes), (height, width)
                assert torch.isfinite(out).all()


def test_vgg_global_pool_keeps_the_cifar_counts_and_scales_with_the_input():
    from effdl.measure import profile

    model = create_model("vgg16").eval()
    at32 = profile(model, (1, 3, 32, 32))
    assert at32.params == pytest.approx(14.72e6, rel=1e-3)  # the CIFAR VGG16 (no conv bias), 10 classes
    assert at32.macs == pytest.approx(313.2e6, rel=1e-3)  # the 0.31 GMACs usually quoted for it
    without_pool = create_model("vgg16").eval()
    without_pool.pool = nn.Identity()  # the model before any input size but 32x32 was supported
    before = profile(without_pool, (1, 3, 32, 32))
    assert (at32.params, at32.macs, at32.mults, at32.adds) == (before.params, before.macs, before.mults, before.adds)
    # At 64x64 every convolution does 4x the work; the 512 -> 10 classifier stays the same.
    classifier_macs = 512 * 10
    assert profile(model, (1, 3, 64, 64)).macs == 4 * (at32.macs - classifier_macs) + classifier_macs


@pytest.mark.parametrize("name", list_models())
def test_activations_are_modules(name):
    with torch.device("meta"):
        model = create_model(name, **SMALL_KWARGS.get(name, {}))
    assert any(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in model.modules())


@pytest.mark.parametrize(
    "name, kwargs, num_classes, expected, rel",
    [
        ("resnet18", {}, 10, 11_173_962, 0.0),  # scoring.md: ResNet18 CIFAR-10 reference
        ("wrn_28_10", {}, 100, 36.5e6, 0.01),  # scoring.md: MicroNet reference WRN-28-10
        ("wrn_40_4", {}, 10, 8.9e6, 0.01),  # Zagoruyko & Komodakis, table 4
        ("wrn", {"depth": 16, "widen": 8}, 10, 11.0e6, 0.01),  # same table
        ("resnet20", {}, 10, 0.27e6, 0.02),  # He et al. 2016, CIFAR table
        ("resnet110", {}, 10, 1.7e6, 0.02),  # same table
        ("densenet_bc_100_12", {}, 10, 0.8e6, 0.04),  # Huang et al., table 2
        ("densenet_bc", {"depth": 250, "growth": 24}, 10, 15.3e6, 0.01),  # same table
        ("densenet_bc", {"depth": 190, "growth": 40}, 10, 25.6e6, 0.01),  # same table
        ("resnext29", {"cardinality": 8, "bottleneck_width": 64}, 10, 34.4e6, 0.01),  # Xie et al.
        ("resnext29", {"cardinality": 16, "bottleneck_width": 64}, 10, 68.1e6, 0.01),  # same
        ("mobilenet_v1", {}, 1000, 4.2e6, 0.01),  # Howard et al.: strides do not change params
    ],
)
def test_published_parameter_counts(name, kwargs, num_classes, expected, rel):
    assert meta_params(name, num_classes, **kwargs) == pytest.approx(expected, rel=rel)


@pytest.mark.parametrize(
    "name, kwargs, tv_name",
    [
        # Only strides differ from torchvision's ImageNet versions, so sizes must match exactly.
        ("mobilenet_v2", {}, "mobilenet_v2"),
        ("shufflenet_v2", {"width": 0.5}, "shufflenet_v2_x0_5"),
        ("shufflenet_v2", {"width": 1.0}, "shufflenet_v2_x1_0"),
        ("shufflenet_v2", {"width": 1.5}, "shufflenet_v2_x1_5"),
        ("shufflenet_v2", {"width": 2.0}, "shufflenet_v2_x2_0"),
    ],
)
def test_same_size_as_torchvision_imagenet_counterpart(name, kwargs, tv_name):
    assert meta_params(name, 1000, **kwargs) == meta_params(f"tv:{tv_name}", 1000)


def test_squeezenet_matches_squeezenet_1_1_up_to_batchnorm():
    assert meta_params("squeezenet", 1000) == pytest.approx(meta_params("tv:squeezenet1_1", 1000), rel=0.01)
    assert sum(isinstance(m, Fire) for m in create_model("squeezenet").modules()) == 8


def test_small_models_have_the_intended_sizes():
    assert 1e6 <= meta_params("fastnet") <= 2.1e6
    assert 1_000 <= meta_params("tiny_cnn") <= 10_000


WIDTH_MODELS = [n for n in list_models() if "width" in inspect.signature(model_factory(n)).parameters]


@pytest.mark.parametrize("name", WIDTH_MODELS)
def test_width_multiplier_shrinks_and_grows_models(name):
    small_kwargs = SMALL_KWARGS.get(name, {})
    half = meta_params(name, width=0.5, **small_kwargs)
    full = meta_params(name, width=1.0, **small_kwargs)
    assert half < 0.6 * full
    if name != "shufflenet_v2":  # its widths are a table, checked against torchvision above
        assert meta_params(name, width=1.5, **small_kwargs) > 1.5 * full


def test_shufflenet_accepts_widths_outside_the_paper_table():
    model = create_model("shufflenet_v2", width=0.75).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter, on purpose
def test_channel_shuffle_is_a_module_equal_to_torch_and_exportable(tmp_path):
    model = create_model("shufflenet_v2", width=0.5)
    assert sum(isinstance(m, nn.ChannelShuffle) for m in model.modules()) == 16
    x = torch.randn(2, 6, 3, 3)
    shuffle = ChannelShuffle(2)
    assert torch.equal(shuffle(x), nn.functional.channel_shuffle(x, 2))
    assert torch.equal(shuffle(x)[:, 1], x[:, 3])  # halves interleaved: 0, 3, 1, 4, 2, 5

    import onnxruntime

    path = tmp_path / "shuffle.onnx"
    torch.onnx.export(shuffle, (x,), str(path), dynamo=False)
    session = onnxruntime.InferenceSession(str(path))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert torch.equal(torch.from_numpy(out), shuffle(x))


def test_squeeze_excite_gates_channels_between_zero_and_one():
    se = SqueezeExcite(32).eval()
    x = torch.rand(2, 32, 4, 4) + 0.1
    ratio = se(x) / x
    assert (ratio > 0).all() and (ratio < 1).all()
    # One gate per channel and sample, the same at every position.
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio))
    assert sum(isinstance(m, SqueezeExcite) for m in create_model("se_resnet18").modules()) == 8


def test_mobilenet_v2_uses_residuals_only_where_shapes_match():
    blocks = [m for m in create_model("mobilenet_v2").modules() if hasattr(m, "use_residual")]
    assert len(blocks) == 17
    assert sum(b.use_residual for b in blocks) == 10  # the paper's repeated stride-1 blocks


def test_dropout_options_are_used_in_training_only():
    model = create_model("wrn", depth=10, widen=1, dropout=0.5)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in model.modules())
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize(
    "name, kwargs",
    [("wrn", {"depth": 27}), ("densenet_bc", {"depth": 99}), ("densenet_bc", {"reduction": 0.0})],
)
def test_bad_architecture_options_raise_effdl_error(name, kwargs):
    with pytest.raises(EffdlError, match="depth|reduction"):
        create_model(name, **kwargs)


def test_torchvision_models_build_untrained_with_requested_classes():
    model = create_model("tv:resnet18", num_classes=10)
    assert count_parameters(model) == 11_181_642
    assert model_spec(model) == {"name": "tv:resnet18", "kwargs": {"num_classes": 10}}
    assert create_model("tv:mobilenet_v2", num_classes=3).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    with torch.device("meta"):
        assert create_model("tv:densenet121", num_classes=100).classifier.out_features == 100


def test_unknown_torchvision_names_suggest_close_ones():
    with pytest.raises(EffdlError, match="tv:resnet18"):
        create_model("tv:resnet19")
    with pytest.raises(EffdlError, match="unknown model"):
        create_model("tv:fasterrcnn_resnet50_fpn")  # detection, not classification
    with pytest.raises(EffdlError, match="pretrained"):
        create_model("tv:resnet18", weights="DEFAULT")
    with pytest.raises(EffdlError, match="cannot build"):
        create_model("tv:resnet18", no_such_option=1)


def test_unknown_zoo_names_suggest_close_ones():
    with pytest.raises(EffdlError, match="wrn_28_10"):
        create_model("wrn_28_1O")
    with pytest.raises(EffdlError, match="option"):
        create_model("vgg16", depth=3)


def test_describe_models_lists_every_model_quickly():
    start = time.perf_counter()
    rows = describe_models()
    assert time.perf_counter() - start < 10
    by_name = {r["name"]: r for r in rows}
    assert sorted(by_name) == list_models()
    assert by_name["resnet18"]["params"] == 11_173_962
    assert by_name["tiny_cnn"]["params"] == count_parameters(create_model("tiny_cnn"))
    assert by_name["wrn"]["options"] == {"depth": 28, "widen": 10, "dropout": 0.0, "width": 1.0}
    assert by_name["densenet121"]["family"] == "densenet"
    assert by_name["wrn_28_10"]["summary"]
    assert all(r["params"] > 0 for r in rows)


def test_models_survive_a_checkpoint_round_trip(tmp_path):
    from effdl.checkpoint import load_model, save_model

    model = create_model("shufflenet_v2", num_classes=5, width=0.5).eval()
    path = save_model(tmp_path / "m.safetensors", model)
    loaded, _ = load_model(path)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))


def test_tiny_cnn_fits_a_small_batch():
    torch.manual_seed(0)
    model = create_model("tiny_cnn")
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
