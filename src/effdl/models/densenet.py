"""DenseNets for 32x32 inputs (Huang et al., "Densely Connected Convolutional Networks").

Every dense layer is a bottleneck BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k) whose k = `growth`
output channels are concatenated to its input; transitions (BN-ReLU-conv1x1-avgpool) compress
channels by `reduction`. Two configurations:
- densenet_bc(depth, growth, reduction): the paper's three-block CIFAR DenseNet-BC with
  (depth - 4) / 6 layers per block (DenseNet-BC-100-12: about 0.8M parameters);
- densenet121: the four-block [6, 12, 24, 16] ImageNet layout with growth 32 and a 3x3 stem, as
  commonly used on CIFAR (kuangliu/pytorch-cifar).
`width` multiplies the growth rate (and with it every channel count).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from effdl.errors import EffdlError
from effdl.models.registry import register_model
from effdl.models.resnet import scaled


class DenseLayer(nn.Module):
    def __init__(self, in_planes: int, growth: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1(self.bn1(x)))
        out = self.conv2(self.relu2(self.bn2(out)))
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.bn(x))))


class DenseNet(nn.Module):
    """Dense blocks of `block_layers[i]` layers, joined by compressing transitions."""

    def __init__(self, block_layers: list[int], growth: int, reduction: float = 0.5,
                 num_classes: int = 10):
        super().__init__()
        planes = 2 * growth
        self.conv1 = nn.Conv2d(3, planes, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i, n in enumerate(block_layers):
            layers = []
            for _ in range(n):
                layers.append(DenseLayer(planes, growth))
                planes += growth
            stages.append(nn.Sequential(*layers))
            if i < len(block_layers) - 1:
                out_planes = int(math.floor(planes * reduction))
                stages.append(Transition(planes, out_planes))
                planes = out_planes
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.features(self.conv1(x))))
        return self.fc(self.flatten(self.pool(x)))


@register_model
def densenet_bc(num_classes: int = 10, depth: int = 100, growth: int = 12, reduction: float = 0.5,
                width: float = 1.0) -> DenseNet:
    """DenseNet-BC-depth-growth for CIFAR (three dense blocks, depth = 6n + 4)."""
    if depth < 10 or (depth - 4) % 6:
        raise EffdlError(f"DenseNet-BC depth must be 6n+4 with n >= 1, got {depth}")
    if not 0 < reduction <= 1:
        raise EffdlError(f"DenseNet reduction must be in (0, 1], got {reduction}")
    n = (depth - 4) // 6
    return DenseNet([n, n, n], scaled(growth, width), reduction, num_classes)


@register_model
def densenet_bc_100_12(num_classes: int = 10, width: float = 1.0) -> DenseNet:
    """DenseNet-BC-100 with growth rate 12 (about 0.8M parameters)."""
    return densenet_bc(num_classes, 100, 12, 0.5, width)


@register_model
def densenet121(num_classes: int = 10, width: float = 1.0) -> DenseNet:
    """DenseNet-121 layout (blocks 6-12-24-16, growth 32) with a 3x3 CIFAR stem."""
    return DenseNet([6, 12, 24, 16], scaled(32, width), 0.5, num_classes)
