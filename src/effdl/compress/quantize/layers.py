"""QuantConv2d / QuantLinear: convolutions and linear layers that quantize their weight and input.

They subclass nn.Conv2d / nn.Linear, so counting, pruning and export still see a convolution, and
they implement the bit-width interface of `effdl.measure.bits` (weight_bits, act_bits,
weight_per_channel, quantized_weight()). `spec` is the JSON description the layer was built from.
A layer may also quantize its output (spec key "output"), for integer inference where the output
feeds a float operation such as a residual Add, and its input where that input is made, for every
reader of it (spec key "shares_input": the producing module, wrapped in `SharedInputQuant`; see
outputs.py). In eval mode every layer on integer grids rounds its bias as the integer runtime does
(`grids.integer_bias_shift`), so the accuracy measured in PyTorch is the exported model's. Spec key
"batchnorm" names the BatchNorm2d the int8 exporter folds into the layer: the bias is then rounded
on the folded grid, and an output quantizer rounds that BatchNorm's output, not the layer's
(`OutputQuantAfter`). Spec key "shares_act_with" names the layer whose input quantizer this layer
uses too (both read one tensor, which is then rounded on one grid; the module is registered in both).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from effdl.compress.quantize.grids import integer_bias_shift
from effdl.compress.quantize.quantizers import build_act_quantizer, build_weight_quantizer


class QuantMixin:
    """Shared behaviour of the quantized layers (the weight and input-activation quantizers)."""

    weight_quantizer: nn.Module
    act_quantizer: nn.Module | None
    output_quantizer: nn.Module | None
    spec: dict[str, Any]

    def _attach(self, spec: dict[str, Any], fit: bool) -> None:
        self.spec = spec
        self.weight_quantizer = build_weight_quantizer(spec["weight"], self.weight, fit=fit)
        self.act_quantizer = build_act_quantizer(spec["act"]) if spec.get("act") else None
        self.output_quantizer = build_act_quantizer(spec["output"]) if spec.get("output") else None
        if spec["weight"]["kind"] == "kmeans":
            # The codebook replaces the float weight: it no longer trains.
            self.weight.requires_grad_(False)

    @property
    def weight_bits(self) -> int:
        return int(self.weight_quantizer.bits)

    @property
    def act_bits(self) -> int | None:
        return int(self.act_quantizer.bits) if self.act_quantizer is not None else None

    @property
    def weight_per_channel(self) -> bool:
        return bool(self.weight_quantizer.per_channel)

    def quantized_weight(self) -> torch.Tensor:
        """The weight values used at inference."""
        return self.weight_quantizer(self.weight)

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_quantizer(x) if self.act_quantizer is not None else x

    def quantized_output(self, y: torch.Tensor) -> torch.Tensor:
        """The float result `y` as the integer layer computes it: in eval mode with the integer bias
        rounding, then rounded by the output quantizer, unless that rounds the folded BatchNorm's
        output instead (spec key "batchnorm": `OutputQuantAfter` calls `round_output`)."""
        if not self.training:
            shift = integer_bias_shift(self, self.__dict__.get("folded_batchnorm"))
            if shift is not None:
                y = y + self.per_output_channel(shift.to(y.dtype))
        return y if self.spec.get("batchnorm") else self.round_output(y)

    def per_output_channel(self, values: torch.Tensor) -> torch.Tensor:
        """`values` ([out_channels]) shaped to broadcast over this layer's output."""
        raise NotImplementedError

    def round_output(self, y: torch.Tensor) -> torch.Tensor:
        return self.output_quantizer(y) if self.output_quantizer is not None else y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight_bits={self.weight_bits}, act_bits={self.act_bits}"


class QuantConv2d(QuantMixin, nn.Conv2d):
    @classmethod
    def from_float(cls, conv: nn.Conv2d, spec: dict[str, Any], fit: bool = True) -> QuantConv2d:
        layer = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )
        layer.load_state_dict(conv.state_dict())
        layer.train(conv.training)
        layer._attach(spec, fit)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantized_output(self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias))

    def per_output_channel(self, values: torch.Tensor) -> torch.Tensor:
        return values.view(-1, 1, 1)  # [N, C, H, W] (or unbatched [C, H, W])


class QuantLinear(QuantMixin, nn.Linear):
    @classmethod
    def from_float(cls, linear: nn.Linear, spec: dict[str, Any], fit: bool = True) -> QuantLinear:
        layer = cls(
            linear.in_features, linear.out_features, linear.bias is not None,
            device=linear.weight.device, dtype=linear.weight.dtype,
        )
        layer.load_state_dict(linear.state_dict())
        layer.train(linear.training)
        layer._attach(spec, fit)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantized_output(F.linear(self.quantized_input(x), self.quantized_weight(), self.bias))

    def per_output_channel(self, values: torch.Tensor) -> torch.Tensor:
        return values  # features are the last dimension, whatever comes before


QUANTIZABLE = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}


class RoundingWrapper(nn.Module):
    """A module whose output a quantized `layer` elsewhere in the model rounds (`rounded`). The layer
    is referenced, not registered: its quantizer's state stays in the layer's state_dict only, and a
    deepcopy of the whole model keeps the two together."""

    def __init__(self, module: nn.Module, layer: nn.Module):
        super().__init__()
        self.module = module
        object.__setattr__(self, "layer", layer)

    @property
    def effdl_counted_as(self) -> nn.Module:
        """Counted as the module it wraps (effdl.measure.counting): the rounding is what an int8
        runtime does on that tensor anyway (a quantize, a requantization), not another operation."""
        return self.module

    def rounded(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.rounded(self.module(*args, **kwargs))


class SharedInputQuant(RoundingWrapper):
    """A parameterless module (say the ReLU ending a residual block) whose output is rounded by the input
    quantizer of the quantized `layer` reading it, so that the other readers of that tensor (the next
    block's shortcut) see the same integers the layer does. The layer rounding its input again changes
    nothing (it is on the grid already).
    """

    def rounded(self, y: torch.Tensor) -> torch.Tensor:
        return self.layer.quantized_input(y)

    def extra_repr(self) -> str:
        return "rounded by the reading layer's input quantizer"


class OutputQuantAfter(RoundingWrapper):
    """The BatchNorm2d right after a quantized convolution, its output rounded by that layer's output
    quantizer: quantization-aware training keeps the BatchNorm, which the int8 exporter folds into
    the convolution, so this is where the integer convolution's output is.
    """

    def rounded(self, y: torch.Tensor) -> torch.Tensor:
        return self.layer.round_output(y)

    def extra_repr(self) -> str:
        return "rounded by the preceding layer's output quantizer"


def quantize_layer(module: nn.Module, spec: dict[str, Any], fit: bool = True) -> nn.Module:
    """A quantized copy of a plain nn.Conv2d / nn.Linear, built from `spec`."""
    return QUANTIZABLE[type(module)].from_float(module, spec, fit)


def is_quantized_layer(module: nn.Module) -> bool:
    return isinstance(module, QuantMixin)
