"""Small, fast CIFAR networks for quick experiments and tests.

- fastnet: in the spirit of the "fast CIFAR" nets (Page's ResNet-9 for DAWNBench, Jordan's
  airbench): a 3x3 stem, then three conv groups (conv, 2x2 max-pool, BN, ReLU, conv, BN, ReLU) of
  64, 256 and 256 channels, global max-pool and a bias-free linear classifier. Pooling right after
  the first conv of a group keeps most convolutions at low resolution, so it trains in seconds per
  epoch on a GPU and reaches high accuracy in few epochs; about 2M parameters at width 1.
- tiny_cnn: three conv-BN-ReLU layers (8-16-32 channels), a few thousand parameters, for tests.
`width` multiplies every channel count.
"""

from __future__ import annotations

import torch
from torch import nn

from effdl.models.layers import conv_bn_act
from effdl.models.registry import register_model
from effdl.models.resnet import scaled


class ConvGroup(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.pool(self.conv1(x))))
        return self.relu2(self.bn2(self.conv2(x)))


class FastNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        stem, *widths = (scaled(c, width) for c in (32, 64, 256, 256))
        self.stem = conv_bn_act(3, stem)
        groups, in_ch = [], stem
        for out in widths:
            groups.append(ConvGroup(in_ch, out))
            in_ch = out
        self.layers = nn.Sequential(*groups)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_ch, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.layers(self.stem(x)))))


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        c1, c2, c3 = (scaled(c, width) for c in (8, 16, 32))
        self.features = nn.Sequential(
            conv_bn_act(3, c1), nn.MaxPool2d(2),
            conv_bn_act(c1, c2), nn.MaxPool2d(2),
            conv_bn_act(c2, c3),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


@register_model
def fastnet(num_classes: int = 10, width: float = 1.0) -> FastNet:
    """Fast CIFAR net (airbench / ResNet-9 style conv groups), about 2M parameters."""
    return FastNet(num_classes, width)


@register_model
def tiny_cnn(num_classes: int = 10, width: float = 1.0) -> TinyCNN:
    """A very small CNN (a few thousand parameters) for tests and smoke runs."""
    return TinyCNN(num_classes, width)
