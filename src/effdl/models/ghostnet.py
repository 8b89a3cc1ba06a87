"""GhostNet (Han et al. 2020, "GhostNet: More Features from Cheap Operations") sized for 32x32 inputs.

- GhostModule: a primary convolution makes ceil(out_ch / ratio) "intrinsic" feature maps, a cheap
  depthwise convolution makes ratio - 1 "ghost" maps from each, and the two are concatenated (and
  cut to out_ch): about 1/ratio of a plain convolution's MACs and parameters.
- GhostBottleneck: ghost module (expand, ReLU) -> [depthwise k x k, stride 2] -> [SE] -> ghost
  module (project, linear), plus an identity shortcut or a depthwise + 1x1 one.
- ghostnet: the paper's table 1 (SE with a hard-sigmoid gate, hidden width rounded to a multiple
  of 4; channels rounded to multiples of 4), so at 1000 classes it has the paper's 5.2M parameters
  (width 1.0) and 2.6M (width 0.5). As the paper, the 1280-wide 1x1 head after pooling does not
  scale with `width`.

CIFAR strides: the stem and the first stride-2 stage keep stride 1, so a 32x32 image ends at 4x4
(stride 8 instead of 32); any input size from 32 up works (global average pooling).
Options: `width` (channels), `ratio` and `dw_kernel` (the ghost modules' cheap operations),
`kernel_size` (every bottleneck's depthwise kernel; None: the paper's 3 and 5) and `separable`
(strided depthwise k x k as k x 1 then 1 x k).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from effdl.errors import EffdlError

from effdl.models.layers import SqueezeExcite, conv_bn_act, depthwise_bn_act, make_divisible
from effdl.models.registry import register_model

# (kernel, expanded, out, SE ratio, stride) per block, grouped by stage; the paper's table 1 with
# the CIFAR stride in the second stage.
STAGES = [
    [(3, 16, 16, 0.0, 1)],
    [(3, 48, 24, 0.0, 1)],
    [(3, 72, 24, 0.0, 1)],
    [(5, 72, 40, 0.25, 2)],
    [(5, 120, 40, 0.25, 1)],
    [(3, 240, 80, 0.0, 2)],
    [(3, 200, 80, 0.0, 1), (3, 184, 80, 0.0, 1), (3, 184, 80, 0.0, 1), (3, 480, 112, 0.25, 1),
     (3, 672, 112, 0.25, 1)],
    [(5, 672, 160, 0.25, 2)],
    [(5, 960, 160, 0.0, 1), (5, 960, 160, 0.25, 1), (5, 960, 160, 0.0, 1), (5, 960, 160, 0.25, 1)],
]


class GhostModule(nn.Module):
    """Primary conv + cheap depthwise operations (Han et al. 2020, eq. 2-3).

    primary: Conv(in_ch -> m, kernel_size, stride) + BN [+ ReLU], m = ceil(out_ch / ratio);
    cheap: depthwise-style Conv(m -> m * (ratio - 1), dw_kernel, groups=m) + BN [+ ReLU];
    output: concat(primary, cheap)[:, :out_ch]. `ratio` >= 2 (ratio 1 would be a plain conv).
    Shapes: (N, in_ch, H, W) -> (N, out_ch, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, ratio: int = 2, dw_kernel: int = 3,
                 stride: int = 1, relu: bool = True):
        super().__init__()
        if ratio < 2:
            raise EffdlError(f"ghost ratio must be at least 2, got {ratio}")
        if dw_kernel < 1 or dw_kernel % 2 == 0:
            raise EffdlError(f"ghost dw_kernel must be odd and positive, got {dw_kernel}")
        self.out_ch = out_ch
        intrinsic = math.ceil(out_ch / ratio)
        activation = nn.ReLU if relu else None
        self.primary = conv_bn_act(in_ch, intrinsic, kernel_size, stride, activation=activation)
        self.cheap = conv_bn_act(intrinsic, intrinsic * (ratio - 1), dw_kernel, groups=intrinsic,
                                 activation=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        intrinsic = self.primary(x)
        out = torch.cat([intrinsic, self.cheap(intrinsic)], dim=1)
        return out[:, :self.out_ch]


class GhostBottleneck(nn.Module):
    """GhostNet's bottleneck (Han et al. 2020, figure 3).

    GhostModule(in_ch -> mid_ch, ReLU) -> [depthwise kernel_size x kernel_size, stride, + BN when
    stride > 1] -> [SqueezeExcite(mid_ch, hard-sigmoid) when se_ratio > 0] -> GhostModule(mid_ch ->
    out_ch, linear) + shortcut: identity when stride is 1 and in_ch == out_ch, else depthwise
    kernel_size x kernel_size (stride) + BN + 1x1 conv + BN. `ratio` and `dw_kernel` go to both
    ghost modules; `separable` makes both strided depthwise convs k x 1 then 1 x k pairs.
    Shapes: (N, in_ch, H, W) -> (N, out_ch, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 se_ratio: float = 0.0, ratio: int = 2, dw_kernel: int = 3, separable: bool = False):
        super().__init__()
        layers: list[nn.Module] = [GhostModule(in_ch, mid_ch, ratio=ratio, dw_kernel=dw_kernel, relu=True)]
        if stride > 1:
            layers.append(depthwise_bn_act(mid_ch, kernel_size, stride, None, separable))
        if se_ratio > 0:
            layers.append(SqueezeExcite(mid_ch, gate=nn.Hardsigmoid, hidden=make_divisible(mid_ch * se_ratio, 4)))
        layers.append(GhostModule(mid_ch, out_ch, ratio=ratio, dw_kernel=dw_kernel, relu=False))
        self.conv = nn.Sequential(*layers)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                depthwise_bn_act(in_ch, kernel_size, stride, None, separable),
                conv_bn_act(in_ch, out_ch, 1, activation=None),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.shortcut(x)


class GhostNet(nn.Module):
    """stem 3x3 conv (16 x width) -> ghost bottlenecks (STAGES) -> 1x1 conv (960 x width) ->
    global average pool -> 1x1 conv to `head` channels (bias, ReLU) -> dropout -> Linear.
    `kernel_size` replaces every bottleneck's depthwise kernel (None: the paper's 3 and 5)."""

    def __init__(self, num_classes: int = 10, width: float = 1.0, ratio: int = 2, dw_kernel: int = 3,
                 dropout: float = 0.2, head: int = 1280, stem_stride: int = 1, kernel_size: int | None = None,
                 separable: bool = False):
        super().__init__()
        if kernel_size is not None and (kernel_size < 1 or kernel_size % 2 == 0):
            raise EffdlError(f"kernel_size must be odd and positive, got {kernel_size}")
        in_ch = make_divisible(16 * width, 4)
        layers: list[nn.Module] = [conv_bn_act(3, in_ch, 3, stem_stride)]
        for stage in STAGES:
            for kernel, expanded, out, se_ratio, stride in stage:
                out = make_divisible(out * width, 4)
                layers.append(GhostBottleneck(in_ch, make_divisible(expanded * width, 4), out, kernel_size or kernel,
                                              stride, se_ratio, ratio, dw_kernel, separable))
                in_ch = out
        last = make_divisible(960 * width, 4)
        layers.append(conv_bn_act(in_ch, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Conv2d(last, head, 1)
        self.head_relu = nn.ReLU(inplace=True)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head_relu(self.head(self.pool(self.features(x))))
        return self.fc(self.dropout(self.flatten(x)))


@register_model
def ghostnet(num_classes: int = 10, width: float = 1.0, ratio: int = 2, dw_kernel: int = 3,
             dropout: float = 0.2, kernel_size: int | None = None, separable: bool = False) -> GhostNet:
    """GhostNet (CIFAR strides): ghost modules, cheap depthwise feature maps."""
    return GhostNet(num_classes, width, ratio, dw_kernel, dropout, kernel_size=kernel_size, separable=separable)
