"""SqueezeNet for 32x32 inputs (Iandola et al. 2016), built from Fire modules.

A Fire module squeezes its input with a 1x1 conv, then expands it with parallel 1x1 and 3x3 convs
whose outputs are concatenated. The layout follows SqueezeNet 1.1 (eight Fire modules, pooling
after the stem and after the 2nd and 4th module) with a 3x3 stride-1 stem for CIFAR, BatchNorm
after every conv (so it trains from scratch at usual learning rates) and a 1x1 conv classifier
followed by global average pooling. `width` multiplies every channel count.
"""

from __future__ import annotations

import torch
from torch import nn

from effdl.models.layers import conv_bn_act
from effdl.models.registry import register_model
from effdl.models.resnet import scaled

# (squeeze, expand) channels of each Fire module; "M" is a 2x2 max-pool.
LAYOUT: list[tuple[int, int] | str] = [
    "M", (16, 64), (16, 64), "M", (32, 128), (32, 128), "M", (48, 192), (48, 192), (64, 256), (64, 256),
]


class Fire(nn.Module):
    def __init__(self, in_ch: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = conv_bn_act(in_ch, squeeze, 1)
        self.expand1x1 = conv_bn_act(squeeze, expand, 1)
        self.expand3x3 = conv_bn_act(squeeze, expand, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], 1)


class SqueezeNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0, dropout: float = 0.0):
        super().__init__()
        in_ch = scaled(64, width)
        layers: list[nn.Module] = [conv_bn_act(3, in_ch)]
        for item in LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            squeeze, expand = (scaled(c, width) for c in item)
            layers.append(Fire(in_ch, squeeze, expand))
            in_ch = 2 * expand
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(in_ch, num_classes, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.classifier(self.dropout(self.features(x)))
        return self.flatten(self.pool(x))


@register_model
def squeezenet(num_classes: int = 10, width: float = 1.0, dropout: float = 0.0) -> SqueezeNet:
    """SqueezeNet 1.1 layout with Fire modules and BatchNorm (CIFAR stem)."""
    return SqueezeNet(num_classes, width, dropout)
