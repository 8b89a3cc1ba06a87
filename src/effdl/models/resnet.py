"""ResNets for 32x32 inputs.

- resnet18/34/50: the four-stage ResNets adapted to CIFAR (3x3 stem, no max-pool), as in the
  widely used kuangliu/pytorch-cifar code; the 10-class resnet18 has 11,173,962 parameters.
- resnet20/32/44/56/110: the three-stage CIFAR ResNets of He et al. (2016), 16-32-64 channels,
  with 1x1-conv projection shortcuts (option B) so every layer is a module that pruning and
  quantization can see.
`width` multiplies every channel count.
"""

from __future__ import annotations

import torch
from torch import nn

from effdl.errors import EffdlError
from effdl.models.registry import register_model


def scaled(channels: int, width: float) -> int:
    """Channel count `channels * width`, at least 1."""
    return max(1, int(round(channels * width)))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu3 = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


class ResNet(nn.Module):
    """A ResNet of `len(num_blocks)` stages; stage i has widths[i] planes and stride 1 then 2."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: list[int],
        widths: list[int],
        num_classes: int = 10,
        in_channels: int = 3,
    ):
        super().__init__()
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages = []
        for i, (n, planes) in enumerate(zip(num_blocks, widths)):
            stages.append(self._make_stage(block, planes, n, stride=1 if i == 0 else 2))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)

    def _make_stage(self, block, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(self.flatten(self.pool(x)))


def _four_stage(block, num_blocks, num_classes: int, width: float) -> ResNet:
    return ResNet(block, num_blocks, [scaled(c, width) for c in (64, 128, 256, 512)], num_classes)


@register_model
def resnet18(num_classes: int = 10, width: float = 1.0) -> ResNet:
    """CIFAR ResNet-18 (kuangliu layout): the course's reference model, 11.17M parameters."""
    return _four_stage(BasicBlock, [2, 2, 2, 2], num_classes, width)


@register_model
def resnet34(num_classes: int = 10, width: float = 1.0) -> ResNet:
    """CIFAR ResNet-34 (kuangliu layout), basic blocks 3-4-6-3."""
    return _four_stage(BasicBlock, [3, 4, 6, 3], num_classes, width)


@register_model
def resnet50(num_classes: int = 10, width: float = 1.0) -> ResNet:
    """CIFAR ResNet-50 (kuangliu layout), bottleneck blocks 3-4-6-3."""
    return _four_stage(Bottleneck, [3, 4, 6, 3], num_classes, width)


def cifar_resnet(depth: int, num_classes: int = 10, width: float = 1.0) -> ResNet:
    """He et al.'s CIFAR ResNet of `depth` = 6n + 2 layers."""
    if (depth - 2) % 6:
        raise EffdlError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, [n, n, n], [scaled(c, width) for c in (16, 32, 64)], num_classes)


def _register_cifar_resnet(depth: int) -> None:
    def factory(num_classes: int = 10, width: float = 1.0) -> ResNet:
        return cifar_resnet(depth, num_classes, width)

    factory.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016)."
    register_model(factory, name=f"resnet{depth}")


for _depth in (20, 32, 44, 56, 110):
    _register_cifar_resnet(_depth)
