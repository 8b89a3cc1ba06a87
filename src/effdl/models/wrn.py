"""Wide ResNets for 32x32 inputs (Zagoruyko & Komodakis, "Wide Residual Networks").

WRN-d-k has three stages of (d - 4) / 6 pre-activation blocks with 16k, 32k and 64k channels
after a 16-channel stem, optional dropout between the two convolutions of each block, and a final
BN-ReLU, global average pool and linear classifier. WRN-28-10 on CIFAR-100 (about 36.5M
parameters) is the MicroNet reference model. `width` further multiplies every channel count.
"""

from __future__ import annotations

import torch
from torch import nn

from effdl.errors import EffdlError
from effdl.models.registry import register_model
from effdl.models.resnet import scaled


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(x))
        residual = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        return out + residual


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: float, num_classes: int = 10, dropout: float = 0.0,
                 width: float = 1.0):
        super().__init__()
        n = (depth - 4) // 6
        stem = scaled(16, width)
        widths = [scaled(16 * widen, width), scaled(32 * widen, width), scaled(64 * widen, width)]
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        stages, in_planes = [], stem
        for i, planes in enumerate(widths):
            blocks = []
            for stride in [1 if i == 0 else 2] + [1] * (n - 1):
                blocks.append(WideBlock(in_planes, planes, stride, dropout))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.layers(self.conv1(x))))
        return self.fc(self.flatten(self.pool(x)))


@register_model
def wrn(num_classes: int = 10, depth: int = 28, widen: float = 10, dropout: float = 0.0,
        width: float = 1.0) -> WideResNet:
    """Wide ResNet WRN-depth-widen (depth = 6n + 4)."""
    if depth < 10 or (depth - 4) % 6:
        raise EffdlError(f"Wide ResNet depth must be 6n+4 with n >= 1, got {depth}")
    return WideResNet(depth, widen, num_classes, dropout, width)


def _register_named(depth: int, widen: int) -> None:
    def factory(num_classes: int = 10, dropout: float = 0.0, width: float = 1.0) -> WideResNet:
        return WideResNet(depth, widen, num_classes, dropout, width)

    factory.__doc__ = f"Wide ResNet WRN-{depth}-{widen}."
    register_model(factory, name=f"wrn_{depth}_{widen}")


for _depth, _widen in ((28, 10), (16, 4), (40, 4)):
    _register_named(_depth, _widen)
