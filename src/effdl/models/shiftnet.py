"""ShiftResNets for 32x32 inputs (Wu et al. 2018, "Shift: A Zero FLOP, Zero Parameter Alternative
to Spatial Convolutions").

Each basic block of a CIFAR ResNet (two 3x3 convolutions) becomes one conv-shift-conv (CSC)
module: 1x1 conv (in -> expansion x out) + BN + ReLU -> `Shift` (zero parameters, zero MACs) ->
1x1 conv (stride) + BN, added to the shortcut, then ReLU. With expansion e a block holds about
2e/18 of the basic block's weights, so ShiftResNet-20 has about 0.03M / 0.10M / 0.19M / 0.28M
parameters at e = 1 / 3 / 6 / 9 (the authors' CIFAR-10 table: 86.7% / 90.1% / 90.6% / 91.7%
accuracy, against ResNet-20's 0.27M and 91.4%).
Stem and shortcuts are those of the zoo's resnet20 (3x3 stem conv; 1x1 projection shortcuts
where the shape changes). `width` multiplies every channel count; `kernel_size` and `dilation`
set the shift's neighbourhood (3: nine directions).
"""

from __future__ import annotations

import torch
from torch import nn

from effdl.errors import EffdlError
from effdl.models.layers import Shift, conv_bn_act
from effdl.models.registry import register_model
from effdl.models.resnet import scaled


class ShiftBlock(nn.Module):
    """Conv-shift-conv residual block (the CSC module of Wu et al. 2018, figure 3).

    1x1 conv (in_ch -> round(out_ch * expansion)) + BN + ReLU -> Shift(kernel_size, dilation) ->
    1x1 conv (-> out_ch, stride) + BN, + shortcut (identity, or 1x1 conv stride + BN when the shape
    changes) -> ReLU. Shapes: (N, in_ch, H, W) -> (N, out_ch, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, expansion: float = 1.0,
                 kernel_size: int = 3, dilation: int = 1):
        super().__init__()
        mid = scaled(out_ch, expansion)
        self.expand = conv_bn_act(in_ch, mid, 1)
        self.shift = Shift(kernel_size, dilation)
        self.project = nn.Sequential(nn.Conv2d(mid, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.shift(self.expand(x)))
        return self.relu(out + self.shortcut(x))


class ShiftResNet(nn.Module):
    """A three-stage CIFAR ResNet (16-32-64 channels x width, stride 1-2-2) of ShiftBlocks."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, width: float = 1.0,
                 expansion: float = 3.0, kernel_size: int = 3, dilation: int = 1):
        super().__init__()
        in_ch = scaled(16, width)
        layers: list[nn.Module] = [conv_bn_act(3, in_ch)]
        for stage, channels in enumerate((16, 32, 64)):
            out = scaled(channels, width)
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(ShiftBlock(in_ch, out, stride, expansion, kernel_size, dilation))
                in_ch = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


def _check(expansion: float) -> None:
    if expansion <= 0:
        raise EffdlError(f"expansion must be positive, got {expansion}")  # Shift checks its own options


@register_model
def shift_resnet(num_classes: int = 10, depth: int = 20, width: float = 1.0, expansion: float = 3.0,
                 kernel_size: int = 3, dilation: int = 1) -> ShiftResNet:
    """ShiftResNet of any depth 6n+2 (zero-MAC shift + 1x1 convolutions)."""
    if depth < 8 or (depth - 2) % 6:
        raise EffdlError(f"shift_resnet depth must be 6n+2 (20, 32, 44, 56, 110...), got {depth}")
    _check(expansion)
    return ShiftResNet((depth - 2) // 6, num_classes, width, expansion, kernel_size, dilation)


@register_model
def shift_resnet20(num_classes: int = 10, width: float = 1.0, expansion: float = 3.0,
                   kernel_size: int = 3, dilation: int = 1) -> ShiftResNet:
    """ShiftResNet-20 (zero-MAC shift + 1x1 convolutions)."""
    _check(expansion)
    return ShiftResNet(3, num_classes, width, expansion, kernel_size, dilation)


@register_model
def shift_resnet56(num_classes: int = 10, width: float = 1.0, expansion: float = 3.0,
                   kernel_size: int = 3, dilation: int = 1) -> ShiftResNet:
    """ShiftResNet-56 (zero-MAC shift + 1x1 convolutions)."""
    _check(expansion)
    return ShiftResNet(9, num_classes, width, expansion, kernel_size, dilation)
