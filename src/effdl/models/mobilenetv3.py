"""MobileNetV3 (Howard et al. 2019, "Searching for MobileNetV3") sized for 32x32 inputs.

The block (`MobileNetV3Block`) is MobileNetV2's inverted residual with optional squeeze-excitation
(hard-sigmoid gate, hidden width expanded/4 rounded to a multiple of 8) and a ReLU or h-swish
activation. Layer tables, channel rounding (`make_divisible`, multiples of 8), the 1x1 last
convolution (6x the last block's width) and the classifier (Linear -> h-swish -> dropout ->
Linear, 1280 or 1024 wide) follow the paper and torchvision, so at 1000 classes the parameter
counts equal torchvision's mobilenet_v3_large / _small (5,483,032 / 2,542,856).

CIFAR strides: the paper shrinks 224 -> 7 (stride 32); here the stem and the first stride-2 block
keep stride 1 so a 32x32 image ends at 4x4 (stride 8), as the zoo's MobileNetV2 does. Any input
size from 32 up works (global average pooling).
Options: `width` multiplies every channel count (classifier included, as in the paper);
`kernel_size` replaces every depthwise kernel (None: the paper's 3 and 5); `separable` factors each
depthwise k x k into k x 1 then 1 x k (`SpatialSeparableConv`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from effdl.errors import EffdlError

from effdl.models.layers import SqueezeExcite, conv_bn_act, depthwise_bn_act, make_divisible
from effdl.models.registry import register_model


class BlockSpec(NamedTuple):
    """One row of a MobileNetV3 table (channel counts before the width multiplier)."""

    kernel: int
    expanded: int
    out: int
    se: bool
    hswish: bool
    stride: int


# The paper's tables 1 and 2 with the CIFAR strides (the first stride-2 block is stride 1 here).
LARGE = [
    BlockSpec(3, 16, 16, False, False, 1), BlockSpec(3, 64, 24, False, False, 1),
    BlockSpec(3, 72, 24, False, False, 1), BlockSpec(5, 72, 40, True, False, 2),
    BlockSpec(5, 120, 40, True, False, 1), BlockSpec(5, 120, 40, True, False, 1),
    BlockSpec(3, 240, 80, False, True, 2), BlockSpec(3, 200, 80, False, True, 1),
    BlockSpec(3, 184, 80, False, True, 1), BlockSpec(3, 184, 80, False, True, 1),
    BlockSpec(3, 480, 112, True, True, 1), BlockSpec(3, 672, 112, True, True, 1),
    BlockSpec(5, 672, 160, True, True, 2), BlockSpec(5, 960, 160, True, True, 1),
    BlockSpec(5, 960, 160, True, True, 1),
]
SMALL = [
    BlockSpec(3, 16, 16, True, False, 1), BlockSpec(3, 72, 24, False, False, 2),
    BlockSpec(3, 88, 24, False, False, 1), BlockSpec(5, 96, 40, True, True, 2),
    BlockSpec(5, 240, 40, True, True, 1), BlockSpec(5, 240, 40, True, True, 1),
    BlockSpec(5, 120, 48, True, True, 1), BlockSpec(5, 144, 48, True, True, 1),
    BlockSpec(5, 288, 96, True, True, 2), BlockSpec(5, 576, 96, True, True, 1),
    BlockSpec(5, 576, 96, True, True, 1),
]


class MobileNetV3Block(nn.Module):
    """Inverted residual with squeeze-excitation (MobileNetV3's bottleneck).

    1x1 expand (in_ch -> expanded_ch, skipped when they are equal) -> depthwise kernel_size x
    kernel_size (stride) -> optional SE -> 1x1 project (linear, no activation); identity shortcut
    when stride is 1 and in_ch == out_ch. `activation` is nn.ReLU or nn.Hardswish (h-swish);
    `separable` uses a depthwise k x 1 then 1 x k pair instead of the k x k. `se_hidden` sets the SE
    width (default expanded_ch / 4 rounded to a multiple of 8, as the paper).
    Shapes: (N, in_ch, H, W) -> (N, out_ch, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_ch: int, out_ch: int, expanded_ch: int, kernel_size: int = 3, stride: int = 1,
                 se: bool = False, activation: type[nn.Module] = nn.ReLU, separable: bool = False,
                 se_hidden: int | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        if expanded_ch != in_ch:
            layers.append(conv_bn_act(in_ch, expanded_ch, 1, activation=activation))
        layers.append(depthwise_bn_act(expanded_ch, kernel_size, stride, activation, separable))
        if se:
            hidden = se_hidden if se_hidden is not None else make_divisible(expanded_ch / 4, 8)
            layers.append(SqueezeExcite(expanded_ch, gate=nn.Hardsigmoid, hidden=hidden))
        layers.append(conv_bn_act(expanded_ch, out_ch, 1, activation=None))
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return out + x if self.use_residual else out


class MobileNetV3(nn.Module):
    """A MobileNetV3 built from a table of `BlockSpec` rows (see LARGE and SMALL).

    stem 3x3 conv (16 x width, h-swish, stride `stem_stride`) -> blocks -> 1x1 conv to 6x the last
    block's width (h-swish) -> global average pool -> Linear(`head` x width) -> h-swish -> dropout
    -> Linear(num_classes).
    """

    def __init__(self, blocks: list[BlockSpec], head: int, num_classes: int = 10, width: float = 1.0,
                 dropout: float = 0.2, kernel_size: int | None = None, separable: bool = False,
                 stem_stride: int = 1):
        super().__init__()
        if kernel_size is not None and (kernel_size < 1 or kernel_size % 2 == 0):
            raise EffdlError(f"kernel_size must be odd and positive, got {kernel_size}")
        in_ch = make_divisible(16 * width)
        layers: list[nn.Module] = [conv_bn_act(3, in_ch, 3, stem_stride, activation=nn.Hardswish)]
        for spec in blocks:
            out = make_divisible(spec.out * width)
            layers.append(MobileNetV3Block(
                in_ch, out, make_divisible(spec.expanded * width), kernel_size or spec.kernel, spec.stride,
                se=spec.se, activation=nn.Hardswish if spec.hswish else nn.ReLU, separable=separable))
            in_ch = out
        last_conv = 6 * in_ch
        layers.append(conv_bn_act(in_ch, last_conv, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        hidden = make_divisible(head * width)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, hidden),
            nn.Hardswish(inplace=True),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


@register_model
def mobilenet_v3_large(num_classes: int = 10, width: float = 1.0, dropout: float = 0.2,
                       kernel_size: int | None = None, separable: bool = False) -> MobileNetV3:
    """MobileNetV3-Large (CIFAR strides): inverted residuals with SE and h-swish."""
    return MobileNetV3(LARGE, 1280, num_classes, width, dropout, kernel_size, separable)


@register_model
def mobilenet_v3_small(num_classes: int = 10, width: float = 1.0, dropout: float = 0.2,
                       kernel_size: int | None = None, separable: bool = False) -> MobileNetV3:
    """MobileNetV3-Small (CIFAR strides): inverted residuals with SE and h-swish."""
    return MobileNetV3(SMALL, 1024, num_classes, width, dropout, kernel_size, separable)
