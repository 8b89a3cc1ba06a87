"""The counting engine: MACs against FlopCounterMode, published counts, functional ops, bits, memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune
from torch.utils.flop_counter import FlopCounterMode

from effdl.errors import EffdlError
from effdl.measure import profile
from effdl.models import create_model


def flop_counter_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.randn(shape))
    return counter.get_total_flops() // 2


class FunctionalNet(nn.Module):
    """Convolutions and linear layers called both as modules and functionally, with groups."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=True)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=16, bias=False)
        self.grouped_weight = nn.Parameter(torch.randn(32, 4, 1, 1))
        self.head_weight = nn.Parameter(torch.randn(10, 32))
        self.head_bias = nn.Parameter(torch.randn(10))

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.depthwise(x)
        x = F.conv2d(x, self.grouped_weight, groups=4)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return F.linear(x, self.head_weight, self.head_bias)


def test_macs_match_flop_counter_on_conv_linear_networks():
    for model, shape in [(FunctionalNet(), (1, 3, 32, 32)),
                         (create_model("resnet20"), (1, 3, 32, 32)),
                         (create_model("resnet18", width=0.25), (1, 3, 40, 24))]:
        assert profile(model, shape).macs == flop_counter_macs(model, shape)


def test_functional_conv_and_linear_are_counted_with_their_parameters():
    prof = profile(FunctionalNet())
    kinds = [r.kind for r in prof.layers]
    assert kinds == ["conv", "relu", "conv", "conv", "global_avgpool", "flatten", "linear"]
    grouped = prof.layers[3]
    # 32 output channels of 4 inputs each over a 16x16 map
    assert grouped.macs == 32 * 16 * 16 * 4
    assert grouped.params == 32 * 4
    head = prof.layers[-1]
    assert head.has_bias and head.params == 10 * 32 + 10
    assert {p.name: p.layer for p in prof.parameters}["head_bias"] == len(prof.layers) - 1


def test_cifar_resnet18_counts():
    prof = profile(create_model("resnet18"))
    assert prof.params == 11_173_962
    assert prof.macs == 555_422_720
    assert prof.weights == 11_164_362  # conv + linear, the w of imt2024


@pytest.mark.parametrize("name, params, gmacs", [("resnet18", 11_689_512, 1.82), ("mobilenet_v2", 3_504_872, 0.300)])
def test_torchvision_models_give_published_counts(name, params, gmacs):
    prof = profile(create_model(f"tv:{name}", num_classes=1000), (1, 3, 224, 224))
    assert prof.params == params
    assert prof.macs / 1e9 == pytest.approx(gmacs, rel=0.01)


class ShuffleBlock(nn.Module):
    """Only functional calls: relu, residual add, pooling, concatenation, channel shuffle, flatten."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1, bias=False)

    def forward(self, x):
        y = F.relu(self.conv(x))
        y = y + x
        z = torch.cat([y, x], dim=1)  # 16 channels
        n, c, h, w = z.shape
        z = z.view(n, 4, c // 4, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        z = F.avg_pool2d(z, 2)
        z = z * torch.sigmoid(z)
        return torch.flatten(z.mean((2, 3)), 1)


def test_functional_calls_are_counted_with_micronet_element_costs():
    prof = profile(ShuffleBlock(), (1, 8, 8, 8))
    by_kind = {r.kind: r for r in prof.layers}
    assert [r.kind for r in prof.layers] == [
        "conv", "relu", "add", "cat", "permute", "avgpool", "sigmoid", "mul", "global_avgpool", "flatten"]
    elems = 8 * 8 * 8
    assert (by_kind["relu"].mults, by_kind["relu"].adds) == (elems, 0)
    assert (by_kind["add"].mults, by_kind["add"].adds) == (0, elems)
    assert by_kind["cat"].output_shape == (1, 16, 8, 8) and by_kind["cat"].mults == by_kind["cat"].adds == 0
    assert by_kind["permute"].mults == 2 * elems  # a permutation-matrix product: 1 multiply per element
    pooled = 16 * 4 * 4
    assert by_kind["avgpool"].window == 4
    assert (by_kind["avgpool"].mults, by_kind["avgpool"].adds) == (pooled, pooled * 3)
    assert (by_kind["sigmoid"].mults, by_kind["sigmoid"].adds) == (2 * pooled, pooled)
    # global average pool over H x W x C: C multiplies, (H*W - 1) * C adds
    assert (by_kind["global_avgpool"].mults, by_kind["global_avgpool"].adds) == (16, 15 * 16)
    assert by_kind["add"].sources == [1, -1]  # the relu and the model input


class QuantizerInside(nn.Conv2d):
    """A conv whose forward does its own element-wise work (as quantizers do): one operation."""

    weight_bits = 4
    act_bits = 8

    def quantized_weight(self):
        scale = self.weight.abs().max() / 7
        return torch.clamp(torch.round(self.weight / scale), -8, 7) * scale

    def forward(self, x):
        x = torch.round(x.clamp(0, 1) * 255) / 255
        return self._conv_forward(x, self.quantized_weight(), self.bias)


def test_operations_inside_a_counted_module_are_not_counted_again():
    model = nn.Sequential(QuantizerInside(3, 4, 3), nn.ReLU())
    prof = profile(model)
    assert [r.kind for r in prof.layers] == ["conv", "relu"]
    conv = prof.layers[0]
    assert (conv.weight_bits, conv.act_bits) == (4, 8)
    assert {p.name: p.bits for p in prof.parameters} == {"0.weight": 4, "0.bias": 32}


def test_pruning_masks_are_measured_not_counted():
    conv = nn.Conv2d(4, 8, 3, bias=False)
    prune.l1_unstructured(conv, "weight", amount=0.75)
    prof = profile(nn.Sequential(conv), (1, 4, 8, 8))
    assert len(prof.layers) == 1
    assert prof.layers[0].sparsity == pytest.approx(0.75, abs=1 / conv.weight.numel())
    assert prof.layers[0].weight_nonzero == int((conv.weight != 0).sum())


def test_half_model_is_measured_at_16_bits():
    prof = profile(create_model("resnet20").half())
    convs = [r for r in prof.layers if r.kind == "conv"]
    assert all(r.weight_bits == 16 and r.act_bits == 16 for r in convs)
    assert all(p.bits == 16 for p in prof.parameters)


def test_size_is_packed_at_real_bits_and_sparse_with_a_bitmask():
    linear = nn.Linear(100, 10, bias=False)
    assert profile(linear, (1, 100)).size_bytes == 1000 * 4
    assert profile(linear.half(), (1, 100)).size_bytes == 1000 * 2
    linear = nn.Linear(100, 10, bias=False)
    with torch.no_grad():
        linear.weight[:, ::2] = 0
    # 500 non-zeros at 32 bits + a 1000-bit mask
    assert profile(linear, (1, 100)).size_bytes == (500 * 32 + 1000) // 8
    # BN running statistics are buffers needed at inference
    bn = nn.BatchNorm2d(4)
    nn.init.constant_(bn.bias, 0.5)
    assert profile(bn, (1, 4, 2, 2)).size_bytes == (8 + 8) * 4


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)

    def forward(self, x):
        return self.conv(x) + x


def test_peak_activation_memory_follows_buffer_lifetimes():
    image = 3 * 32 * 32 * 4  # bytes of one fp32 3x32x32 tensor
    chain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 4, 3, padding=1))
    # the in-place ReLU adds nothing; the input dies after the first conv; peak = 8-ch + 4-ch maps
    assert profile(chain).peak_activation_bytes == (8 + 4) * 32 * 32 * 4
    # the skip keeps the input alive until the add, which writes a third tensor
    assert profile(Residual()).peak_activation_bytes == 3 * image


def test_bad_input_sizes_are_user_errors():
    model = create_model("resnet20")
    with pytest.raises(EffdlError, match="input size"):
        profile(model, (2, 3, 32, 32))
    with pytest.raises(EffdlError, match="model failed on an input of shape"):
        profile(model, (1, 5, 32, 32))


def test_batchnorm_reads_the_conv_it_follows():
    prof = profile(create_model("resnet20"))
    names = [r.name for r in prof.layers]
    bn = prof.layers[names.index("bn1")]
    assert bn.sources == [names.index("conv1")]


# ------------------------------------------------------------ every op that multiply-accumulates
class Head(nn.Module):
    """Conv features, then a classifier written with one matmul-family call (`how`)."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.w = nn.Parameter(torch.randn(8, 5))  # (features, classes)
        self.b = nn.Parameter(torch.randn(5))

    def forward(self, x):
        f = torch.flatten(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1), 1)  # (1, 8)
        if self.how == "addmm":
            return torch.addmm(self.b, f, self.w)
        if self.how == "einsum":
            return torch.einsum("bc,ck->bk", f, self.w) + self.b
        if self.how == "matmul_right":
            return f @ self.w + self.b
        if self.how == "matmul_left":  # weight on the left, through a transposed view
            return (self.w.t() @ f.t()).t() + self.b
        if self.how == "bmm":
            return torch.bmm(f.unsqueeze(1), self.w.unsqueeze(0)).squeeze(1) + self.b
        if self.how == "baddbmm":
            return torch.baddbmm(self.b.view(1, 1, 5), f.unsqueeze(1), self.w.unsqueeze(0)).squeeze(1)
        raise ValueError(self.how)


class Attention(nn.Module):
    """Tokens from a conv, projected to q, k, v, attended with SDPA (or written out with `math`)."""

    def __init__(self, math: bool = False):
        super().__init__()
        self.math = math
        self.embed = nn.Conv2d(3, 16, 4, stride=4)
        self.qkv = nn.Linear(16, 48)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)  # (1, 64, 16)
        q, k, v = self.qkv(t).reshape(1, 64, 3, 2, 8).permute(2, 0, 3, 1, 4)  # each (1, 2, 64, 8)
        if self.math:
            return torch.softmax(q @ k.transpose(-2, -1) / 8 ** 0.5, dim=-1) @ v
        return F.scaled_dot_product_attention(q, k, v)


class DictOut(nn.Module):
    """Shared conv called twice, a reshape between layers, and a dict output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.fc = nn.Linear(4 * 8 * 8, 32)
        self.up = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1, groups=1)

    def forward(self, x):
        y = self.conv(F.relu(self.conv(x)))
        z = self.fc(y.reshape(1, -1))
        return {"features": y, "image": self.up(z.view(1, 2, 4, 4)), "flat": z}


class FunctionalTransposed(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, 2, 2))  # Cin, Cout/groups, k, k

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, stride=2, groups=2)


ZOO = {
    "conv_transpose2d": (nn.ConvTranspose2d(3, 4, 2, stride=2), (1, 3, 32, 32)),
    "functional_conv_transpose2d": (FunctionalTransposed(), (1, 4, 8, 8)),
    "conv1d": (nn.Sequential(nn.Conv1d(4, 8, 3), nn.ReLU(), nn.Conv1d(8, 8, 3, groups=2, padding=2, dilation=2),
                             nn.ConvTranspose1d(8, 6, 4, stride=2), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                             nn.Linear(6, 3)), (1, 4, 50)),
    "conv3d": (nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(),
                             nn.ConvTranspose3d(4, 2, 2, stride=2, groups=2)), (1, 2, 4, 6, 6)),
    **{f"head_{how}": (Head(how), (1, 3, 16, 16))
       for how in ("addmm", "einsum", "matmul_right", "matmul_left", "bmm", "baddbmm")},
    # FlopCounterMode counts nothing for CPU's fused SDPA kernel: the written-out attention is its
    # reference (test_attention_counts_the_same_as_written_out checks SDPA against it)
    "attention": (Attention(math=True), (1, 3, 32, 32)),
    "dict_shared_reshape": (DictOut(), (1, 4, 8, 8)),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_macs_match_flop_counter_on_a_zoo_and_every_parameter_is_used(name):
    model, shape = ZOO[name]
    prof = profile(model, shape)
    assert prof.macs == flop_counter_macs(model, shape) > 0
    assert prof.warnings == [] and prof.unused_parameters == []
    assert prof.params == sum(p.numel() for p in model.parameters())


def test_issue_values_transposed_conv_and_heads():
    prof = profile(nn.ConvTranspose2d(3, 4, 2, stride=2), (1, 3, 32, 32))
    assert prof.macs == 49_152 and prof.layers[0].transposed
    assert {p.name: p.layer for p in prof.parameters} == {"weight": 0, "bias": 0}
    for how in ("addmm", "einsum", "matmul_left", "baddbmm"):
        head = [r for r in profile(Head(how), (1, 3, 16, 16)).layers if r.kind == "matmul"]
        assert len(head) == 1 and head[0].macs == 8 * 5
        assert head[0].weight_shape in ((8, 5), (5, 8), (1, 8, 5))  # the parameter, whichever side


def test_shared_conv_counts_every_call():
    prof = profile(DictOut(), (1, 4, 8, 8))
    convs = [r for r in prof.layers if r.op == "Conv2d"]
    assert [r.name for r in convs] == ["conv", "conv#2"]
    assert convs[0].macs == convs[1].macs == 4 * 8 * 8 * 2 * 9  # grouped: Cin/groups = 2


def test_attention_counts_the_same_as_written_out():
    prof = profile(Attention(), (1, 3, 32, 32))
    math_prof = profile(Attention(math=True), (1, 3, 32, 32))
    assert prof.macs == math_prof.macs == flop_counter_macs(Attention(math=True), (1, 3, 32, 32))
    sdpa = next(r for r in prof.layers if r.kind == "attention")
    assert sdpa.macs == 2 * 64 * 64 * (8 + 8) and sdpa.weight_bits is None


def test_a_parameter_operand_carries_its_sparsity_and_bits_on_either_side():
    from effdl.measure import score

    for how in ("einsum", "matmul_left", "addmm"):
        model = Head(how)
        dense = profile(model, (1, 3, 16, 16))
        with torch.no_grad():
            model.w[::2] = 0  # half the weight
        sparse = profile(model, (1, 3, 16, 16))
        head = next(r for r in sparse.layers if r.kind == "matmul")
        assert head.sparsity == pytest.approx(0.5) and head.sparse_mults == head.macs // 2
        assert {p.name: p.nonzero for p in sparse.parameters}["w"] == 20
        micro = {c.name: c for c in score(sparse, "micronet", freebie=False).contributions}
        micro_dense = {c.name: c for c in score(dense, "micronet", freebie=False).contributions}
        assert micro[head.name].ops < micro_dense[head.name].ops
        # the head weight is a weight of imt2024's w (addmm's bias too), counted by its non-zeros
        assert sparse.weights == dense.weights == 8 * 27 + 8 + 40 + (5 if how == "addmm" else 0)
        assert score(sparse, "imt2024").params < score(dense, "imt2024").params
        half = next(r for r in profile(Head(how).half(), (1, 3, 16, 16)).layers if r.kind == "matmul")
        assert half.weight_bits == 16


def test_inputs_of_any_rank():
    conv1d = nn.Sequential(nn.Conv1d(3, 4, 5), nn.ReLU())
    assert profile(conv1d, (1, 3, 32)).macs == 4 * 28 * 3 * 5
    mlp = nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 2))
    assert profile(mlp, (1, 20)).macs == 20 * 10 + 10 * 2
    with pytest.raises(EffdlError, match=r"batch 1 first.*pass \(1, 3, 32\)"):
        profile(conv1d, (3, 32))


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.aux = nn.Linear(4, 2)  # never called

    def forward(self, x):
        return self.conv(x)


class Tensordot(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 5))

    def forward(self, x):
        return torch.tensordot(x.flatten(2).transpose(1, 2), self.w, dims=1)


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x)[0]


def test_unused_parameters_are_listed_and_uncounted_arithmetic_is_refused():
    prof = profile(Unused())
    assert [p.name for p in prof.unused_parameters] == ["aux.weight", "aux.bias"]
    assert len(prof.warnings) == 2 and "aux.weight" in prof.warnings[0]
    assert prof.to_dict()["warnings"] == prof.warnings
    with pytest.raises(EffdlError, match="tensordot performs 15,360 multiply-accumulates that effdl does not count"):
        profile(Tensordot())
    with pytest.raises(EffdlError, match="multiply-accumulates that effdl does not count"):
        profile(SelfAttention(), (1, 4, 8))
