"""Efficient operators of the zoo (MobileNetV3, GhostNet, ShiftResNet, spatially separable convs):
each block counted by the counting engine as a hand count from its shapes says, the shift as data
movement, every new model exported to ONNX and checked in ONNX Runtime, published sizes."""

from __future__ import annotations

import warnings

import onnx
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from effdl.deploy.onnx import export_verified
from effdl.errors import EffdlError
from effdl.measure import profile
from effdl.measure.scoring import score
from effdl.models import count_parameters, create_model, describe_models, list_models
from effdl.models.ghostnet import GhostBottleneck, GhostModule
from effdl.models.layers import Shift, SpatialSeparableConv, make_divisible, shift_offsets
from effdl.models.mobilenetv3 import MobileNetV3Block
from effdl.models.shiftnet import ShiftBlock

pytestmark = pytest.mark.usefixtures("one_thread")

NEW_MODELS = ["mobilenet_v3_large", "mobilenet_v3_small", "ghostnet", "shift_resnet", "shift_resnet20",
              "shift_resnet56"]
# Small variants that keep each test to about a second on a 2-core CPU.
SMALL = {
    "mobilenet_v3_large": {"width": 0.25},
    "mobilenet_v3_small": {"width": 0.25, "separable": True},
    "ghostnet": {"width": 0.25},
    "shift_resnet20": {"width": 0.5, "expansion": 1},
}


def counted(block: nn.Module, channels: int, size: int = 8):
    """(MACs, parameters) the counting engine finds in `block` on a 1 x channels x size x size input."""
    prof = profile(block.eval(), (1, channels, size, size))
    return prof.macs, prof.params


def bn(c: int) -> int:
    return 2 * c  # BatchNorm affine parameters


# ------------------------------------------------------------------------------------ shift
def reference_shift(x: torch.Tensor, kernel_size: int = 3, dilation: int = 1) -> torch.Tensor:
    """Element by element: channel c moves by the offset of its group, zero outside the image."""
    offsets = shift_offsets(kernel_size, dilation)
    channels, height, width = x.shape[1:]
    out = torch.zeros_like(x)
    for c in range(channels):
        group = max(g for g in range(len(offsets)) if g * channels // len(offsets) <= c)
        dy, dx = offsets[group]
        for y in range(height):
            for x_ in range(width):
                if 0 <= y + dy < height and 0 <= x_ + dx < width:
                    out[:, c, y, x_] = x[:, c, y + dy, x_ + dx]
    return out


def test_shift_moves_each_channel_group_by_its_offset_with_zeros_at_the_border():
    x = torch.randn(2, 18, 5, 6)
    out = Shift(3)(x)
    # 18 channels, 9 directions: two channels each, in raster order from (-1, -1) to (1, 1)
    assert torch.equal(out[:, 0, 1:, 1:], x[:, 0, :-1, :-1]) and (out[:, 0, 0] == 0).all()
    assert torch.equal(out[:, 8:10], x[:, 8:10])  # the centre group stays
    assert torch.equal(out[:, 17, :-1, :-1], x[:, 17, 1:, 1:]) and (out[:, 17, -1] == 0).all()
    for channels, kernel, dilation in ((18, 3, 1), (11, 3, 1), (4, 3, 1), (30, 5, 1), (12, 3, 2)):
        x = torch.randn(2, channels, 5, 6)
        assert torch.equal(Shift(kernel, dilation)(x), reference_shift(x, kernel, dilation)), (channels, kernel)


def test_shift_is_deterministic_and_differentiable():
    x = torch.randn(2, 27, 6, 6, requires_grad=True)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        out = Shift(3)(x)
        out.square().sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(out, Shift(3)(x))
    # d sum(out^2) / dx is 2x where the input value was moved into the output, 0 where it fell off
    kept = x.grad != 0
    assert int(kept.sum()) == int((out != 0).sum()) < x.numel()
    assert torch.allclose(x.grad[kept], 2 * x.detach()[kept])
    assert list(Shift(3).parameters()) == []


def test_shift_counts_zero_macs_zero_parameters_and_moves_data_like_a_channel_permutation():
    shifted = nn.Sequential(nn.Conv2d(3, 18, 1, bias=False), Shift(3))
    shuffled = nn.Sequential(nn.Conv2d(3, 18, 1, bias=False), nn.ChannelShuffle(3))
    prof = profile(shifted, (1, 3, 8, 8))
    (record,) = [r for r in prof.layers if r.op == "Shift"]
    assert (record.kind, record.macs, record.params, record.adds) == ("permute", 0, 0, 0)
    assert record.mults == 18 * 8 * 8  # spec: "a channel permutation counts as a sparse permutation-matrix product"
    assert (prof.macs, prof.params) == (8 * 8 * 18 * 3, 18 * 3)
    costs = {}
    for scorer in ("micronet", "imt2021", "imt2024"):
        shift_cost = [(c.params, c.ops) for c in score(shifted, scorer).contributions if c.name == "1"]
        shuffle_cost = [(c.params, c.ops) for c in score(shuffled, scorer).contributions if c.name == "1"]
        assert shift_cost == shuffle_cost and len(shift_cost) == 1, scorer
        costs[scorer] = shift_cost[0]
    assert costs["micronet"][0] == 0 and costs["micronet"][1] > 0  # multiplies by the 0/1 matrix count there
    assert costs["imt2021"] == costs["imt2024"] == (0, 0)  # data movement is free there


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter, on purpose
@pytest.mark.filterwarnings("ignore::UserWarning")  # its note that strided slices are not constant-folded
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # sizes are fixed in the graph (batch aside)
def test_shift_exports_as_padding_and_slices_and_runs_in_onnxruntime(tmp_path):
    import onnxruntime

    shift, x = Shift(3), torch.randn(2, 20, 7, 9)
    path = tmp_path / "shift.onnx"
    torch.onnx.export(shift, (x,), str(path), dynamo=False)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"Pad", "Slice", "Concat"} <= ops
    assert not ops & {"Gather", "GatherND", "GatherElements", "ScatterND", "Conv", "MatMul"}
    session = onnxruntime.InferenceSession(str(path))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert torch.equal(torch.from_numpy(out), shift(x))


def test_bad_shift_options_raise_effdl_errors():
    for kwargs in ({"kernel_size": 2}, {"kernel_size": 0}, {"dilation": 0}):
        with pytest.raises(EffdlError, match="shift"):
            Shift(**kwargs)
    with pytest.raises(EffdlError, match="6n\\+2"):
        create_model("shift_resnet", depth=21)
    with pytest.raises(EffdlError, match="expansion"):
        create_model("shift_resnet20", expansion=0)
    with pytest.raises(EffdlError, match="kernel_size"):
        create_model("shift_resnet20", kernel_size=4)
    with pytest.raises(EffdlError, match="ratio"):
        create_model("ghostnet", ratio=1)
    with pytest.raises(EffdlError, match="dw_kernel"):
        create_model("ghostnet", dw_kernel=2)
    with pytest.raises(EffdlError, match="kernel_size"):
        create_model("ghostnet", kernel_size=0)
    with pytest.raises(EffdlError, match="kernel_size"):
        create_model("mobilenet_v3_small", kernel_size=4)


# ------------------------------------------------------------------------- hand counts of blocks
def test_spatially_separable_conv_is_counted_as_its_two_thin_convolutions():
    conv = SpatialSeparableConv(4, 6, kernel_size=3, mid_ch=5)
    # 3x1: 5 outputs of 3 x 4 inputs per position; 1x3: 6 outputs of 3 x 5 inputs per position
    assert counted(conv, 4) == (64 * 5 * 3 * 4 + 64 * 6 * 3 * 5, 5 * 4 * 3 + 6 * 5 * 3)
    assert conv(torch.randn(1, 4, 8, 8)).shape == (1, 6, 8, 8)
    depthwise = SpatialSeparableConv(16, 16, kernel_size=5, stride=2, groups=16)
    # stride 2 along the height first (4 x 8 positions), then along the width (4 x 4)
    assert counted(depthwise, 16) == (4 * 8 * 16 * 5 + 4 * 4 * 16 * 5, 16 * 5 + 16 * 5)
    assert depthwise(torch.randn(1, 16, 9, 9)).shape == (1, 16, 5, 5)  # as a 'same' 5x5, stride 2


def test_mobilenet_v3_block_hand_count():
    block = MobileNetV3Block(8, 8, 16, kernel_size=3, stride=1, se=True, activation=nn.Hardswish)
    se_hidden = 8  # 16 / 4 rounded up to a multiple of 8
    macs = (64 * 16 * 8  # 1x1 expand
            + 64 * 16 * 9  # 3x3 depthwise
            + 16 * se_hidden + se_hidden * 16  # squeeze-excitation on the 1x1 pooled map
            + 64 * 8 * 16)  # 1x1 project
    params = (8 * 16 + bn(16) + 16 * 9 + bn(16) + (16 * se_hidden + se_hidden) + (se_hidden * 16 + 16)
              + 16 * 8 + bn(8))
    assert counted(block, 8) == (macs, params)
    assert block.use_residual
    assert sum(isinstance(m, nn.Hardswish) for m in block.modules()) == 2
    assert sum(isinstance(m, nn.Hardsigmoid) for m in block.modules()) == 1

    separable = MobileNetV3Block(8, 12, 16, kernel_size=5, stride=2, separable=True)
    macs = 64 * 16 * 8 + (4 * 8 * 16 * 5 + 4 * 4 * 16 * 5) + 16 * 12 * 16
    params = 8 * 16 + bn(16) + 16 * 5 + 16 * 5 + bn(16) + 16 * 12 + bn(12)
    assert counted(separable, 8) == (macs, params)
    assert not separable.use_residual

    no_expand = MobileNetV3Block(16, 16, 16)  # expanded == input: no 1x1 expand, as the paper's first block
    assert counted(no_expand, 16) == (64 * 16 * 9 + 64 * 16 * 16, 16 * 9 + bn(16) + 16 * 16 + bn(16))


def test_ghost_module_hand_count():
    ghost = GhostModule(6, 10, ratio=2)
    # 5 intrinsic maps from a 1x1 conv, 5 ghost maps from a 3x3 depthwise conv of them
    assert counted(ghost, 6) == (64 * 5 * 6 + 64 * 5 * 9, 5 * 6 + bn(5) + 5 * 9 + bn(5))
    assert ghost(torch.randn(1, 6, 8, 8)).shape == (1, 10, 8, 8)
    ghost3 = GhostModule(6, 10, ratio=3, dw_kernel=5)
    # ceil(10 / 3) = 4 intrinsic maps, 2 ghosts each (8, of which 6 are kept)
    assert counted(ghost3, 6) == (64 * 4 * 6 + 64 * 8 * 25, 4 * 6 + bn(4) + 8 * 25 + bn(8))
    assert ghost3(torch.randn(1, 6, 8, 8)).shape == (1, 10, 8, 8)
    # About 1/ratio of the plain 1x1 convolution it replaces, plus the cheap depthwise work
    plain = 64 * 10 * 6
    assert counted(ghost, 6)[0] < 0.5 * plain + 64 * 5 * 9 + 1


def test_ghost_bottleneck_hand_count():
    block = GhostBottleneck(8, 16, 12, kernel_size=3, stride=2, se_ratio=0.25)
    macs = (64 * 8 * 8 + 64 * 8 * 9  # ghost 8 -> 16 at 8x8: 8 intrinsic + 8 ghosts
            + 16 * 16 * 9  # 3x3 depthwise stride 2: 4x4 outputs
            + 16 * 4 + 4 * 16  # SE, hidden 16 * 0.25 = 4
            + 16 * 6 * 16 + 16 * 6 * 9  # ghost 16 -> 12 at 4x4: 6 intrinsic + 6 ghosts
            + 16 * 8 * 9 + 16 * 12 * 8)  # shortcut: 3x3 depthwise stride 2, then 1x1 8 -> 12
    params = ((8 * 8 + bn(8) + 8 * 9 + bn(8)) + (16 * 9 + bn(16)) + (16 * 4 + 4 + 4 * 16 + 16)
              + (16 * 6 + bn(6) + 6 * 9 + bn(6)) + (8 * 9 + bn(8) + 8 * 12 + bn(12)))
    assert counted(block, 8) == (macs, params)
    assert block(torch.randn(2, 8, 8, 8)).shape == (2, 12, 4, 4)
    separable = GhostBottleneck(8, 16, 12, kernel_size=3, stride=2, se_ratio=0.25, separable=True)
    # each strided 3x3 depthwise (16 channels in the block, 8 in the shortcut) becomes 3x1 at 4x8
    # positions then 1x3 at 4x4
    macs += -(16 * 16 * 9 + 16 * 8 * 9) + (32 * 16 * 3 + 16 * 16 * 3) + (32 * 8 * 3 + 16 * 8 * 3)
    params += -(16 * 9 + 8 * 9) + (16 * 3 * 2 + 8 * 3 * 2)
    assert counted(separable, 8) == (macs, params)
    assert separable(torch.randn(2, 8, 9, 9)).shape == (2, 12, 5, 5)


def test_shift_block_hand_count():
    block = ShiftBlock(8, 16, stride=2, expansion=2)
    macs = (64 * 32 * 8  # 1x1 expand to 16 x 2 = 32 channels at 8x8
            + 0  # the shift
            + 16 * 16 * 32  # 1x1 project, stride 2: 4x4 outputs
            + 16 * 16 * 8)  # 1x1 projection shortcut, stride 2
    params = 8 * 32 + bn(32) + 32 * 16 + bn(16) + 8 * 16 + bn(16)
    assert counted(block, 8) == (macs, params)
    prof = profile(block, (1, 8, 8, 8))
    (shift,) = [r for r in prof.layers if r.op == "Shift"]
    assert (shift.macs, shift.params, shift.mults) == (0, 0, 32 * 64)


# ------------------------------------------------------------------------------------ models
def test_new_models_are_in_the_zoo_listing():
    rows = {r["name"]: r for r in describe_models()}
    assert set(NEW_MODELS) <= set(list_models())
    assert rows["mobilenet_v3_small"]["family"] == "mobilenetv3"
    assert rows["ghostnet"]["family"] == "ghostnet"
    assert rows["shift_resnet20"]["family"] == "shiftnet"
    assert rows["shift_resnet20"]["options"] == {"width": 1.0, "expansion": 3.0, "kernel_size": 3, "dilation": 1}


def meta_params(name: str, num_classes: int = 10, **kwargs) -> int:
    with torch.device("meta"):
        return count_parameters(create_model(name, num_classes=num_classes, **kwargs))


def test_published_sizes():
    # Only the strides differ from torchvision's ImageNet MobileNetV3s: equal parameter counts.
    assert meta_params("mobilenet_v3_large", 1000) == meta_params("tv:mobilenet_v3_large", 1000)
    assert meta_params("mobilenet_v3_small", 1000) == meta_params("tv:mobilenet_v3_small", 1000)
    assert meta_params("mobilenet_v3_small", 1000, width=0.75) == meta_params("tv:mobilenet_v3_small", 1000,
                                                                              width_mult=0.75)
    # Han et al. 2020, table 7: GhostNet 0.5x 2.6M, 1.0x 5.2M, 1.3x 7.3M (ImageNet, 1000 classes)
    for width, millions in ((0.5, 2.6), (1.0, 5.2), (1.3, 7.3)):
        assert meta_params("ghostnet", 1000, width=width) / 1e6 == pytest.approx(millions, abs=0.06)
    # Wu et al.'s CIFAR-10 ShiftResNet table (millions, 2 decimals) for expansion 1, 3, 6, 9
    for name, table in (("shift_resnet20", (0.03, 0.10, 0.19, 0.28)), ("shift_resnet56", (0.10, 0.29, 0.58, 0.87))):
        for expansion, millions in zip((1, 3, 6, 9), table):
            assert meta_params(name, expansion=expansion) / 1e6 == pytest.approx(millions, abs=0.005), (name, expansion)
    assert meta_params("shift_resnet", depth=56) == meta_params("shift_resnet56")


def test_options_change_the_work_the_way_they_should():
    def macs(name, **kwargs):
        return profile(create_model(name, **kwargs).eval()).macs

    base = macs("mobilenet_v3_small", width=0.5)
    assert macs("mobilenet_v3_small", width=0.5, separable=True) < base  # 2k instead of k*k per depthwise
    assert macs("mobilenet_v3_small", width=0.5, kernel_size=3) < base  # 3x3 instead of the paper's 5x5
    assert macs("mobilenet_v3_small", width=0.5, kernel_size=7) > base
    assert meta_params("ghostnet", ratio=3, width=0.5) < meta_params("ghostnet", ratio=2, width=0.5)
    ghost = macs("ghostnet", width=0.5)
    assert macs("ghostnet", width=0.5, kernel_size=3) < ghost < macs("ghostnet", width=0.5, kernel_size=7)
    assert macs("ghostnet", width=0.5, separable=True) < ghost
    assert macs("ghostnet", width=0.5, dw_kernel=1) < ghost  # 1x1 cheap operations
    assert macs("shift_resnet20", expansion=1) < macs("shift_resnet20", expansion=3) < macs("resnet20")
    # The shift's neighbourhood changes no parameter and no MAC
    assert macs("shift_resnet20", kernel_size=5, dilation=2) == macs("shift_resnet20")
    assert meta_params("shift_resnet20", kernel_size=5) == meta_params("shift_resnet20")


@pytest.mark.parametrize("name", SMALL)
def test_counts_agree_with_torch_flop_counter_and_nothing_is_left_uncounted(name):
    model = create_model(name, **SMALL[name]).eval()
    prof = profile(model, (1, 3, 32, 32))
    flops = FlopCounterMode(display=False)
    with flops, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert prof.macs == flops.get_total_flops() // 2
    assert prof.params == count_parameters(model)
    assert not prof.warnings


@pytest.mark.parametrize("name", SMALL)
def test_forward_and_backward_reach_every_parameter(name):
    model = create_model(name, num_classes=5, **SMALL[name]).train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
    nn.functional.cross_entropy(model(x), y).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert sum(float(p.grad.abs().sum()) for p in model.parameters()) > 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter, on purpose: 10-30x faster
@pytest.mark.parametrize("name", SMALL)
def test_new_models_export_to_onnx_and_match_in_onnxruntime(name, tmp_path):
    model = create_model(name, **SMALL[name]).eval()
    model.effdl_data = {"input_size": [3, 48, 40]}  # a non-square size: exported at the model's own
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path, check = export_verified(model, tmp_path / f"{name}.onnx", exporter="torchscript")
    assert check.rule == "float" and check.max_abs_diff < 1e-4
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    if name.startswith("shift"):
        assert {"Pad", "Slice", "Concat"} <= ops
    if name.startswith("mobilenet_v3"):
        assert {"HardSwish", "HardSigmoid"} <= ops


def test_new_models_survive_a_checkpoint_round_trip(tmp_path):
    from effdl.checkpoint import load_model, save_model

    x = torch.randn(2, 3, 32, 32)
    for name, kwargs in (("shift_resnet20", {"expansion": 2, "kernel_size": 5}),
                         ("ghostnet", {"width": 0.25, "ratio": 3, "separable": True})):
        model = create_model(name, num_classes=5, **kwargs).eval()
        loaded, _ = load_model(save_model(tmp_path / f"{name}.safetensors", model))
        assert torch.equal(loaded(x), model(x)), name


def test_make_divisible_rounds_as_the_reference_code():
    from torchvision.models._utils import _make_divisible

    values = [c * w for c in (3, 10, 16, 24, 72, 88, 960, 1280) for w in (0.25, 0.35, 0.5, 0.75, 1.0, 1.3)]
    for divisor in (4, 8):
        assert [make_divisible(v, divisor) for v in values] == [_make_divisible(v, divisor) for v in values]
    assert make_divisible(10, 8) == 16  # 8 would lose more than 10%
