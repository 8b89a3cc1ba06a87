"""Squeeze-and-excitation ResNets for 32x32 inputs (Hu et al., "Squeeze-and-Excitation Networks").

The CIFAR ResNet18 of resnet.py with a squeeze-excitation gate (reduction 16) on each BasicBlock's
residual branch, applied before the shortcut is added. `width` multiplies every channel count.
"""

from __future__ import annotations

import torch

from effdl.models.layers import SqueezeExcite
from effdl.models.registry import register_model
from effdl.models.resnet import BasicBlock, ResNet, scaled


class SEBasicBlock(BasicBlock):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__(in_planes, planes, stride)
        self.se = SqueezeExcite(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.relu2(out + self.shortcut(x))


@register_model
def se_resnet18(num_classes: int = 10, width: float = 1.0) -> ResNet:
    """ResNet18 (CIFAR) with squeeze-excitation in every BasicBlock."""
    return ResNet(SEBasicBlock, [2, 2, 2, 2], [scaled(c, width) for c in (64, 128, 256, 512)], num_classes)
