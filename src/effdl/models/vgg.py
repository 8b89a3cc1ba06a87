"""VGG with BatchNorm, CIFAR variant (Simonyan & Zisserman), for any input from 32x32 up.

Conv3x3-BN-ReLU stacks separated by 2x2 max-pools; after five pools a 32x32 input is 1x1x512,
so the classifier is a single 512 -> num_classes linear layer (the common CIFAR adaptation; vgg16
has about 14.7M parameters for 10 classes). Larger or non-square inputs leave a bigger map, which a
global max-pool reduces to 1x1 first: one more max-pool, in VGG's own style, and a no-op that
counts zero operations at 32x32 (so parameters, MACs and scores there are those of the CIFAR
model). Convolutions have no bias: the BatchNorm after each one makes it redundant. `width`
multiplies every channel count.
"""

from __future__ import annotations

import torch
from torch import nn

from effdl.models.registry import register_model
from effdl.models.resnet import scaled

POOL = "M"
CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL],
    "vgg13": [64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL],
    "vgg16": [64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL,
              512, 512, 512, POOL],
    "vgg19": [64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL, 512, 512, 512, 512, POOL,
              512, 512, 512, 512, POOL],
}


class VGG(nn.Module):
    def __init__(self, config: list[int | str], num_classes: int = 10, width: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in config:
            if item == POOL:
                layers.append(nn.MaxPool2d(2, 2))
                continue
            out_channels = scaled(int(item), width)
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


def _register_vgg(name: str) -> None:
    def factory(num_classes: int = 10, width: float = 1.0) -> VGG:
        return VGG(CONFIGS[name], num_classes, width)

    factory.__doc__ = f"{name.upper()} with BatchNorm (CIFAR, 512 -> num_classes classifier)."
    register_model(factory, name=name)


for _name in CONFIGS:
    _register_vgg(_name)
