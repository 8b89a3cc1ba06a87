"""Building blocks shared by several model families (conv-BN-activation, squeeze-excitation)."""

from __future__ import annotations

import torch
from torch import nn

from effdl.models.resnet import scaled


def conv_bn_act(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                activation: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """Conv (no bias, 'same' padding) + BatchNorm + optional activation, as one Sequential."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if activation is not None:
        layers.append(activation(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al.): rescale channels by a gate computed from their means."""

    def __init__(self, channels: int, reduction: int = 16, gate: type[nn.Module] = nn.Sigmoid):
        super().__init__()
        hidden = scaled(channels, 1 / reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.relu = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(hidden, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))
        return x * scale
