"""Building blocks shared by several model families and by search spaces built from them.

- conv_bn_act: conv (no bias, 'same' padding) + BatchNorm + optional activation.
- SqueezeExcite: channel gates from channel means (Hu et al. 2018; MobileNetV3 and GhostNet use it
  with a hard-sigmoid gate and a hidden width rounded to a multiple of 8 or 4).
- SpatialSeparableConv: a k x k convolution factored into k x 1 then 1 x k (Szegedy et al. 2016;
  Jaderberg et al. 2014), grouped or depthwise too.
- Shift: the zero-parameter, zero-MAC spatial shift of Wu et al. 2018 (CVPR), exportable to ONNX
  (padding and slicing only) and deterministic.
- make_divisible: the channel rounding of MobileNetV2/V3 and GhostNet width multipliers.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from effdl.errors import EffdlError

from effdl.models.resnet import scaled


def conv_bn_act(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                activation: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """Conv (no bias, 'same' padding) + BatchNorm + optional activation, as one Sequential."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if activation is not None:
        layers.append(activation(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al.): rescale channels by a gate computed from their means."""

    def __init__(self, channels: int, reduction: int = 16, gate: type[nn.Module] = nn.Sigmoid,
                 hidden: int | None = None):
        """`hidden` (default channels / reduction, rounded) is the width of the bottleneck."""
        super().__init__()
        hidden = hidden if hidden is not None else scaled(channels, 1 / reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.relu = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(hidden, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))
        return x * scale


def make_divisible(channels: float, divisor: int = 8) -> int:
    """`channels` rounded to the nearest multiple of `divisor` (at least `divisor`), rounded up by
    one more step when the nearest multiple would lose more than 10% (the rule of the MobileNetV2/V3
    and GhostNet reference code, so width multipliers give their published sizes)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


class SpatialSeparableConv(nn.Sequential):
    """A k x k convolution factored into a k x 1 convolution then a 1 x k one (no non-linearity
    between them, as in Jaderberg et al. 2014 and AIMET's spatial SVD).

    in_ch -> mid_ch (k x 1, stride along the height) -> out_ch (1 x k, stride along the width).
    `mid_ch` defaults to out_ch; `groups` applies to both (groups = in_ch = mid_ch = out_ch makes the
    depthwise pair of a MobileNet block). Costs per output position: k*in_ch/groups*mid_ch +
    k*mid_ch/groups*out_ch MACs instead of k*k*in_ch/groups*out_ch. Shapes: (N, in_ch, H, W) ->
    (N, out_ch, ceil(H / stride), ceil(W / stride)) for odd k, as a 'same'-padded k x k conv.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, mid_ch: int | None = None, bias: bool = False):
        mid_ch = out_ch if mid_ch is None else mid_ch
        pad = kernel_size // 2
        super().__init__(
            nn.Conv2d(in_ch, mid_ch, (kernel_size, 1), (stride, 1), (pad, 0), groups=groups, bias=False),
            nn.Conv2d(mid_ch, out_ch, (1, kernel_size), (1, stride), (0, pad), groups=groups, bias=bias),
        )


def depthwise_bn_act(channels: int, kernel_size: int = 3, stride: int = 1,
                     activation: type[nn.Module] | None = nn.ReLU, separable: bool = False) -> nn.Sequential:
    """Depthwise kernel_size x kernel_size conv + BN + optional activation ('same' padding), or with
    `separable` a depthwise k x 1 then 1 x k pair (`SpatialSeparableConv`, 2k instead of k*k MACs per
    output) + BN + activation. Shapes: (N, C, H, W) -> (N, C, ceil(H / stride), ceil(W / stride))."""
    if not separable:
        return conv_bn_act(channels, channels, kernel_size, stride, groups=channels, activation=activation)
    layers: list[nn.Module] = [SpatialSeparableConv(channels, channels, kernel_size, stride, groups=channels),
                               nn.BatchNorm2d(channels)]
    if activation is not None:
        layers.append(activation(inplace=True))
    return nn.Sequential(*layers)


def shift_offsets(kernel_size: int = 3, dilation: int = 1) -> list[tuple[int, int]]:
    """The (dy, dx) displacements of a `kernel_size` x `kernel_size` shift, in raster order
    (the centre (0, 0) included), each a multiple of `dilation`."""
    half = kernel_size // 2
    return [(dy * dilation, dx * dilation) for dy in range(-half, half + 1) for dx in range(-half, half + 1)]


class Shift(nn.Module):
    """Spatial shift (Wu et al. 2018, "Shift: A Zero FLOP, Zero Parameter Alternative to Spatial
    Convolutions"): the channels are split into kernel_size**2 near-equal consecutive groups
    (group g holds channels floor(g*C/K2) .. floor((g+1)*C/K2) - 1 with K2 = kernel_size**2) and
    group g is moved by `shift_offsets(kernel_size, dilation)[g]`: out[c, y, x] = in[c, y+dy, x+dx],
    zero where (y+dy, x+dx) falls outside the image. With fewer channels than offsets some offsets
    get no channel.

    No parameters and no multiply-accumulates: the counting engine records it as data movement
    (see effdl.measure.counting). Written with one zero padding and static slices, so it is
    deterministic and exports to ONNX as Pad + Slice + Concat. Shape preserved: (N, C, H, W).
    The grouping is computed from the input's channel count at each call.
    """

    def __init__(self, kernel_size: int = 3, dilation: int = 1):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0 or dilation < 1:
            raise EffdlError(f"shift needs an odd kernel_size >= 1 and dilation >= 1, got {kernel_size}, {dilation}")
        self.kernel_size = kernel_size
        self.dilation = dilation

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, dilation={self.dilation}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offsets = shift_offsets(self.kernel_size, self.dilation)
        channels, height, width = x.shape[1], x.shape[-2], x.shape[-1]
        pad = (self.kernel_size // 2) * self.dilation
        padded = F.pad(x, (pad, pad, pad, pad))
        bounds = [g * channels // len(offsets) for g in range(len(offsets) + 1)]
        pieces = [
            padded[:, start:stop, pad + dy:pad + dy + height, pad + dx:pad + dx + width]
            for (dy, dx), start, stop in zip(offsets, bounds, bounds[1:]) if stop > start
        ]
        return torch.cat(pieces, dim=1)
