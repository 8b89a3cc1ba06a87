"""ShuffleNetV2 for 32x32 inputs (Ma et al. 2018), CIFAR variant.

A 3x3 stride-1 stem (no max-pool), then three stages of one downsampling unit plus 3, 7 and 3
basic units, a 1x1 conv, global average pool and linear classifier. A basic unit splits its
channels in two, transforms one half (1x1, depthwise 3x3, 1x1) and concatenates it with the other;
a downsampling unit transforms both halves with stride 2. Each unit ends with a channel shuffle,
an `nn.ChannelShuffle` module so that counting and export see it.
`width` picks the paper's configurations 0.5, 1, 1.5 and 2; other values scale the 1x channels.
Structured pruning may only remove the channels inside a unit's branches (and the stem's and
head's): the channels around a shuffle are coupled by the permutation, so `prune_channels` keeps
them (it gives torch-pruning a pruner for ChannelShuffle; without one, its dependency grouping ran
for minutes without finishing on this model).
"""

from __future__ import annotations

import torch
from torch import nn

from effdl.models.layers import conv_bn_act
from effdl.models.registry import register_model

# Stage output channels and the final 1x1 conv's channels, per width (from the paper).
CONFIGS: dict[float, tuple[int, int, int, int]] = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (244, 488, 976, 2048),
}
STAGE_UNITS = (3, 7, 3)


class ChannelShuffle(nn.ChannelShuffle):
    """nn.ChannelShuffle written with reshape/transpose, which every ONNX exporter supports."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """Stride 1: split, transform one half, concatenate, shuffle (in and out channels equal)."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.half = half
        self.branch = nn.Sequential(
            conv_bn_act(half, half, 1),
            conv_bn_act(half, half, 3, groups=half, activation=None),
            conv_bn_act(half, half, 1),
        )
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, transformed = x[:, : self.half], x[:, self.half :]
        return self.shuffle(torch.cat([kept, self.branch(transformed)], 1))


class DownsampleUnit(nn.Module):
    """Stride 2: both branches see the whole input and each yields half the output channels."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        half = out_channels // 2
        self.left = nn.Sequential(
            conv_bn_act(in_channels, in_channels, 3, 2, groups=in_channels, activation=None),
            conv_bn_act(in_channels, half, 1),
        )
        self.right = nn.Sequential(
            conv_bn_act(in_channels, half, 1),
            conv_bn_act(half, half, 3, 2, groups=half, activation=None),
            conv_bn_act(half, half, 1),
        )
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(torch.cat([self.left(x), self.right(x)], 1))


def _even(channels: float) -> int:
    return max(2, 2 * int(round(channels / 2)))


def shufflenet_channels(width: float) -> tuple[int, int, int, int]:
    """Stage and final channels for `width`: the paper's table, else the 1x ones scaled (even)."""
    if float(width) in CONFIGS:
        return CONFIGS[float(width)]
    base = CONFIGS[1.0]
    return _even(base[0] * width), _even(base[1] * width), _even(base[2] * width), (
        2048 if width > 1.5 else 1024
    )


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        *stages, last = shufflenet_channels(width)
        self.stem = conv_bn_act(3, 24)
        layers, in_ch = [], 24
        for out, repeats in zip(stages, STAGE_UNITS):
            units = [DownsampleUnit(in_ch, out)] + [ShuffleUnit(out) for _ in range(repeats)]
            layers.append(nn.Sequential(*units))
            in_ch = out
        self.layers = nn.Sequential(*layers)
        self.head = conv_bn_act(in_ch, last, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.layers(self.stem(x)))
        return self.fc(self.flatten(self.pool(x)))


@register_model
def shufflenet_v2(num_classes: int = 10, width: float = 1.0) -> ShuffleNetV2:
    """ShuffleNetV2 (CIFAR stem); width 0.5, 1, 1.5 or 2 as in the paper."""
    return ShuffleNetV2(num_classes, width)
