"""MobileNets for 32x32 inputs (Howard et al. 2017; Sandler et al. 2018), CIFAR variants.

As in kuangliu/pytorch-cifar, the stem convolution has stride 1 so a 32x32 image is not shrunk
too soon: MobileNetV1 keeps the paper's other strides (32 -> 2 before pooling); MobileNetV2 also
uses stride 1 in the 24-channel stage (32 -> 4 before pooling).
- mobilenet_v1: depthwise-separable conv blocks (dw3x3-BN-ReLU, pw1x1-BN-ReLU).
- mobilenet_v2: inverted residual blocks (pw expand-BN-ReLU6, dw3x3-BN-ReLU6, pw project-BN)
  with an identity shortcut when stride is 1 and channels match, as in the paper.
`width` multiplies every channel count; as in the paper, MobileNetV2's final 1280-channel layer is
only widened (never narrowed).
"""

from __future__ import annotations

import torch
from torch import nn

from effdl.models.layers import conv_bn_act
from effdl.models.registry import register_model
from effdl.models.resnet import scaled

# (output channels, stride) of MobileNetV1's depthwise-separable blocks.
V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
             (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]

# (expansion, output channels, blocks, stride of the first block) of MobileNetV2's stages.
V2_STAGES = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        in_ch = scaled(32, width)
        layers: list[nn.Module] = [conv_bn_act(3, in_ch)]
        for out, stride in V1_BLOCKS:
            out = scaled(out, width)
            layers.append(nn.Sequential(
                conv_bn_act(in_ch, in_ch, 3, stride, groups=in_ch),
                conv_bn_act(in_ch, out, 1),
            ))
            in_ch = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, expansion: int, stride: int):
        super().__init__()
        hidden = in_ch * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_act(in_ch, hidden, 1, activation=nn.ReLU6))
        layers += [
            conv_bn_act(hidden, hidden, 3, stride, groups=hidden, activation=nn.ReLU6),
            conv_bn_act(hidden, out_ch, 1, activation=None),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return out + x if self.use_residual else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0, dropout: float = 0.0):
        super().__init__()
        in_ch = scaled(32, width)
        layers: list[nn.Module] = [conv_bn_act(3, in_ch, activation=nn.ReLU6)]
        for expansion, out, n, stride in V2_STAGES:
            out = scaled(out, width)
            for s in [stride] + [1] * (n - 1):
                layers.append(InvertedResidual(in_ch, out, expansion, s))
                in_ch = out
        last = scaled(1280, max(1.0, width))
        layers.append(conv_bn_act(in_ch, last, 1, activation=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.flatten(self.pool(self.features(x)))))


@register_model
def mobilenet_v1(num_classes: int = 10, width: float = 1.0) -> MobileNetV1:
    """MobileNetV1 (CIFAR strides)."""
    return MobileNetV1(num_classes, width)


@register_model
def mobilenet_v2(num_classes: int = 10, width: float = 1.0, dropout: float = 0.0) -> MobileNetV2:
    """MobileNetV2 (CIFAR strides)."""
    return MobileNetV2(num_classes, width, dropout)
