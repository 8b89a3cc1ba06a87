"""Parametric families for architecture search: every choice is a keyword, so a searched network is
a normal model name plus `model_kwargs` that checkpoints rebuild (effdl.search samples them).

`search_resnet`: a CIFAR ResNet whose stages each choose their width, depth (residual blocks),
kernel size and operator ("conv": two k x k convolutions, as resnet20's BasicBlock; "separable":
each k x k factored into k x 1 then 1 x k, `SpatialSeparableConv`).

`search_mobilenet`: MobileNetV2/V3-like stages of `MobileNetV3Block`s, each choosing its width,
depth, depthwise kernel, expansion ratio, squeeze-excitation, activation (relu / hswish) and
operator ("conv" or "separable" depthwise).

Stage i > 0 halves the resolution (stride 2 in its first block) unless the stage says `stride: 1`.
Shapes: (N, 3, H, W) -> (N, num_classes) for any H, W >= 8 (global average pooling).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from effdl.errors import EffdlError
from effdl.models.layers import SpatialSeparableConv, conv_bn_act
from effdl.models.mobilenetv3 import MobileNetV3Block
from effdl.models.registry import register_model
from effdl.models.resnet import scaled

RESNET_STAGE_KEYS = {"width", "depth", "kernel", "op", "stride"}
MOBILENET_STAGE_KEYS = {"width", "depth", "kernel", "expansion", "se", "activation", "op", "stride"}
ACTIVATIONS = {"relu": nn.ReLU, "hswish": nn.Hardswish}


def _check_stages(stages: Any, allowed: set[str], family: str) -> list[dict[str, Any]]:
    if not isinstance(stages, (list, tuple)) or not stages:
        raise EffdlError(f"{family}: 'stages' must be a non-empty list of mappings such as {{width: 16, depth: 2}}")
    checked = []
    for i, stage in enumerate(stages, start=1):
        if not isinstance(stage, dict):
            raise EffdlError(f"{family}: stage {i} must be a mapping, got {stage!r:.60}")
        unknown = set(stage) - allowed
        if unknown:
            raise EffdlError(f"{family}: stage {i} has unknown key(s) {', '.join(sorted(unknown))}; "
                             f"a stage has: {', '.join(sorted(allowed))}")
        for key in ("width", "depth"):
            if not isinstance(stage.get(key), int) or stage[key] < 1:
                raise EffdlError(f"{family}: stage {i} needs a positive integer '{key}', got {stage.get(key)!r}")
        kernel = stage.get("kernel", 3)
        if not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
            raise EffdlError(f"{family}: stage {i} kernel must be odd and positive, got {kernel!r}")
        if stage.get("op", "conv") not in ("conv", "separable"):
            raise EffdlError(f"{family}: stage {i} op must be conv or separable, got {stage.get('op')!r}")
        checked.append(stage)
    return checked


def _widened(stages: list[dict[str, Any]], width: float) -> list[dict[str, Any]]:
    return stages if width == 1.0 else [{**s, "width": scaled(s["width"], width)} for s in stages]


def _spatial(in_ch: int, out_ch: int, kernel: int, stride: int, separable: bool) -> nn.Module:
    if separable and kernel > 1:
        return SpatialSeparableConv(in_ch, out_ch, kernel, stride)
    return nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False)


class SearchBasicBlock(nn.Module):
    """resnet20's BasicBlock with a chosen kernel and operator: conv-BN-ReLU-conv-BN + shortcut, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, kernel: int, separable: bool):
        super().__init__()
        self.conv1 = _spatial(in_ch, out_ch, kernel, stride, separable)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = _spatial(out_ch, out_ch, kernel, 1, separable)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class SearchNet(nn.Module):
    """stem -> stages -> global average pool -> linear (the body of both search families)."""

    def __init__(self, stem: nn.Module, stages: nn.Sequential, features: int, num_classes: int):
        super().__init__()
        self.stem = stem
        self.layers = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.layers(self.stem(x)))))


@register_model
def search_resnet(num_classes: int = 10, stem: int = 16, stages: list[dict[str, Any]] | None = None,
                  width: float = 1.0) -> SearchNet:
    """ResNet-like searchable network; default stages give resnet20's layout (3 x 3 blocks, 16/32/64).

    `stages`: list of {width, depth, kernel=3, op=conv|separable, stride=1 for the first stage else 2}.
    `width` multiplies every channel count (stem and stages). Raises EffdlError for a malformed stage.
    """
    stages = _check_stages(stages if stages is not None else [{"width": w, "depth": 3} for w in (16, 32, 64)],
                           RESNET_STAGE_KEYS, "search_resnet")
    stages = _widened(stages, width)
    stem = scaled(stem, width)
    stem_layer = conv_bn_act(3, stem, 3, 1)
    blocks, in_ch = [], stem
    for i, s in enumerate(stages):
        stride = s.get("stride", 1 if i == 0 else 2)
        for b in range(s["depth"]):
            blocks.append(SearchBasicBlock(in_ch, s["width"], stride if b == 0 else 1, s.get("kernel", 3),
                                           s.get("op", "conv") == "separable"))
            in_ch = s["width"]
    return SearchNet(stem_layer, nn.Sequential(*blocks), in_ch, num_classes)


@register_model
def search_mobilenet(num_classes: int = 10, stem: int = 16, stages: list[dict[str, Any]] | None = None,
                     last: int = 0, width: float = 1.0) -> SearchNet:
    """MobileNetV2/V3-like searchable network of inverted residuals (`MobileNetV3Block`).

    `stages`: list of {width, depth, kernel=3, expansion=4, se=false, activation=relu|hswish,
    op=conv|separable, stride=1 for the first stage else 2}; the expanded width is
    round(width_in * expansion). `last`: width of a final 1x1 conv (0: none). `width` multiplies
    every channel count. Raises EffdlError for a malformed stage.
    """
    stages = _check_stages(stages if stages is not None else
                           [{"width": w, "depth": 2} for w in (16, 24, 40)], MOBILENET_STAGE_KEYS, "search_mobilenet")
    stages = _widened(stages, width)
    stem, last = scaled(stem, width), scaled(last, width) if last else 0
    stem_layer = conv_bn_act(3, stem, 3, 1, activation=nn.Hardswish)
    blocks: list[nn.Module] = []
    in_ch = stem
    for i, s in enumerate(stages):
        activation = s.get("activation", "relu")
        if activation not in ACTIVATIONS:
            raise EffdlError(f"search_mobilenet: stage {i + 1} activation must be relu or hswish, got {activation!r}")
        expansion = s.get("expansion", 4)
        if not isinstance(expansion, (int, float)) or expansion < 1:
            raise EffdlError(f"search_mobilenet: stage {i + 1} expansion must be >= 1, got {expansion!r}")
        stride = s.get("stride", 1 if i == 0 else 2)
        for b in range(s["depth"]):
            blocks.append(MobileNetV3Block(
                in_ch, s["width"], max(in_ch, int(round(in_ch * expansion))), s.get("kernel", 3),
                stride if b == 0 else 1, se=bool(s.get("se", False)), activation=ACTIVATIONS[activation],
                separable=s.get("op", "conv") == "separable"))
            in_ch = s["width"]
    if last:
        blocks.append(conv_bn_act(in_ch, last, 1, activation=nn.Hardswish))
        in_ch = last
    return SearchNet(stem_layer, nn.Sequential(*blocks), in_ch, num_classes)
