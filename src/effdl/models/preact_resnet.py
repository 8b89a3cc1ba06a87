"""Pre-activation ResNets for 32x32 inputs (He et al., "Identity Mappings in Deep Residual Networks").

Each block is BN-ReLU-conv-BN-ReLU-conv with an identity (or 1x1 projection) shortcut taken from
the pre-activated input; a final BN-ReLU precedes pooling, as in the paper. The stages follow the
four-stage CIFAR ResNet18/34 (64-128-256-512 channels, 3x3 stem, no max-pool).
`width` multiplies every channel count.
"""

from __future__ import annotations

import torch
from torch import nn

from effdl.models.registry import register_model
from effdl.models.resnet import scaled


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(x))
        # A projection reads the pre-activated input; an identity shortcut keeps the raw input.
        residual = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + residual


class PreActResNet(nn.Module):
    def __init__(self, num_blocks: list[int], widths: list[int], num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        stages, in_planes = [], widths[0]
        for i, (n, planes) in enumerate(zip(num_blocks, widths)):
            blocks = []
            for stride in [1 if i == 0 else 2] + [1] * (n - 1):
                blocks.append(PreActBlock(in_planes, planes, stride))
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


def _preact(num_blocks: list[int], num_classes: int, width: float) -> PreActResNet:
    return PreActResNet(num_blocks, [scaled(c, width) for c in (64, 128, 256, 512)], num_classes)


@register_model
def preact_resnet18(num_classes: int = 10, width: float = 1.0) -> PreActResNet:
    """Pre-activation ResNet-18 (CIFAR)."""
    return _preact([2, 2, 2, 2], num_classes, width)


@register_model
def preact_resnet34(num_classes: int = 10, width: float = 1.0) -> PreActResNet:
    """Pre-activation ResNet-34 (CIFAR)."""
    return _preact([3, 4, 6, 3], num_classes, width)
