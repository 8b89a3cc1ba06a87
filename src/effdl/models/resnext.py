"""ResNeXt-29 for 32x32 inputs (Xie et al., "Aggregated Residual Transformations").

Three stages of three bottleneck blocks (1x1 conv, grouped 3x3 conv with `cardinality` groups,
1x1 conv) after a 64-channel 3x3 stem. In stage i each group is `bottleneck_width * 2**i` channels
wide and the block outputs 256 * 2**i channels, as in the paper's CIFAR models
(ResNeXt-29 2x64d, 8x64d, 16x64d, 32x4d). `width` multiplies every channel count.
"""

from __future__ import annotations

import torch
from torch import nn

from effdl.models.registry import register_model
from effdl.models.resnet import scaled


class ResNeXtBlock(nn.Module):
    def __init__(self, in_ch: int, group_width: int, out_ch: int, cardinality: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, group_width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(group_width)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(group_width, group_width, 3, stride, 1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(group_width)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(group_width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu3 = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


class ResNeXt29(nn.Module):
    def __init__(self, cardinality: int = 2, bottleneck_width: int = 64, num_classes: int = 10,
                 width: float = 1.0):
        super().__init__()
        in_ch = scaled(64, width)
        self.conv1 = nn.Conv2d(3, in_ch, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU(inplace=True)
        stages = []
        for i in range(3):
            group_width = cardinality * scaled(bottleneck_width * 2**i, width)
            out_ch = scaled(256 * 2**i, width)
            blocks = []
            for stride in (1 if i == 0 else 2, 1, 1):
                blocks.append(ResNeXtBlock(in_ch, group_width, out_ch, cardinality, stride))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(self.flatten(self.pool(x)))


@register_model
def resnext29(num_classes: int = 10, cardinality: int = 2, bottleneck_width: int = 64,
              width: float = 1.0) -> ResNeXt29:
    """ResNeXt-29 with `cardinality` groups of `bottleneck_width` channels (default 2x64d)."""
    return ResNeXt29(cardinality, bottleneck_width, num_classes, width)


@register_model
def resnext29_2x64d(num_classes: int = 10, width: float = 1.0) -> ResNeXt29:
    """ResNeXt-29 2x64d."""
    return ResNeXt29(2, 64, num_classes, width)


@register_model
def resnext29_32x4d(num_classes: int = 10, width: float = 1.0) -> ResNeXt29:
    """ResNeXt-29 32x4d."""
    return ResNeXt29(32, 4, num_classes, width)
