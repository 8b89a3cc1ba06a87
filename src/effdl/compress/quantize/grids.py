"""The integer grids quantizers round to, as an integer runtime sees them, and the one rounding an
integer runtime adds that fake quantization does not: the bias.

A layer runs on integers when its weights lie on a symmetric per-channel grid (`weight_scales`)
and its input on a uniform activation grid (`act_grid`), both of 2 to 8 bits: a k-bit grid is a
subset of int8's with the same scale. The int8 exporter (`effdl.deploy.int8`) writes exactly these
grids. An integer convolution accumulates in int32 and adds its bias in int32 too, on the grid of
scale input scale x weight scale (per channel; ONNX Runtime rounds a float bias there when it fuses
QLinearConv). With a BatchNorm folded into the layer that bias is the folded one,
(b - mean) * gamma / sqrt(var + eps) + beta, and the weight scale is multiplied by |gamma / sqrt(...)|.
Fake quantization adds the bias in float, so without `integer_bias_shift` each integer layer of the
exported graph lands a few codes one step away from PyTorch's (measured: 1.4% of a 4-bit layer's
output codes, and 7% of a barely trained tiny CNN's predictions at 3-bit output grids); with it the
two agree to float rounding (max output difference 3e-6). Integer-arithmetic-only inference:
Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", section 2.4 (int32 bias, scale S_in * S_w, zero point 0).
"""

from __future__ import annotations

import torch
from torch import nn

from effdl.compress.quantize.fold import batchnorm_factor
from effdl.compress.quantize.quantizers import LSQAct, LSQWeight, MinMaxWeight, PACTAct, RangeAct

MIN_BITS, MAX_BITS = 2, 8  # uniform grids int8 holds exactly (1 bit is a sign, not a grid with a zero)

# An activation grid as ONNX writes it: (scale, uint8 zero point, lowest code, highest code). The
# codes are the uint8 values the quantizer's integers occupy: 0..255 at 8 bits, fewer below.
ActGrid = tuple[float, int, int, int]

MIN_FOLDED_SCALE = 1e-12  # a channel whose BatchNorm scale is 0 keeps a tiny, not a zero, weight scale


def grid_bits(quantizer: nn.Module | None) -> bool:
    """Whether `quantizer` rounds to 2..8 bits (the widths an int8 grid holds)."""
    bits = getattr(quantizer, "bits", None)
    return isinstance(bits, int) and MIN_BITS <= bits <= MAX_BITS


def weight_scales(layer: nn.Module) -> torch.Tensor | None:
    """Per-output-channel scales (float32, detached, shape [out_channels]) of the symmetric grid the
    layer's quantized weights lie on (zero point 0, integers in -2^(k-1)..2^(k-1)-1 for k = 2..8 bits,
    a subset of int8's), or None when they lie on no such grid."""
    quantizer = layer.weight_quantizer
    if not grid_bits(quantizer):
        return None
    if isinstance(quantizer, MinMaxWeight):
        scale = quantizer.scale(layer.weight)
    elif isinstance(quantizer, LSQWeight):
        scale = quantizer.step.detach().clamp(min=1e-8)  # the step its forward uses
    else:
        return None
    return scale.detach().float().reshape(-1).expand(layer.weight.shape[0])  # per tensor -> per channel


def act_grid(quantizer: nn.Module | None) -> ActGrid | None:
    """(scale, uint8 zero point, lowest code, highest code) of the grid an activation quantizer
    rounds to, when ONNX's uint8 QuantizeLinear (round(x / scale) + zero point, clamped to 0..255)
    followed by a clip of the codes to [lowest, highest] computes exactly what it does; else None
    (also while the quantizer is not calibrated or initialised).

    Calibrated range (ptq-int8, QAT minmax: codes 0..2^k-1), LSQ (unsigned: 0..2^k-1; signed:
    -2^(k-1)..2^(k-1)-1, zero point 2^(k-1)) and PACT (unsigned: 0..2^k-1; signed: clipped at
    +-alpha, so -(2^(k-1)-1)..2^(k-1)-1, codes 1..2^k-1) at k = 2..8 bits qualify; DoReFa's
    clip-to-one and sign activations do not.
    """
    if quantizer is None or not grid_bits(quantizer) or not bool(getattr(quantizer, "ready", False)):
        return None
    if isinstance(quantizer, RangeAct):
        scale, zero_point = quantizer.qparams()
        return scale, zero_point, 0, 2**quantizer.bits - 1
    lowest, highest = quantizer.levels() if hasattr(quantizer, "levels") else (None, None)
    if isinstance(quantizer, LSQAct):
        return float(quantizer.step.detach().clamp(min=1e-8)), int(lowest), 0, int(lowest + highest)
    if isinstance(quantizer, PACTAct):  # signed PACT clips at +-alpha = +-highest steps, not at -lowest
        scale = float(quantizer.alpha.detach().clamp(min=1e-6)) / highest
        return scale, int(lowest), int(lowest - highest) if lowest else 0, int(lowest + highest)
    return None


@torch.no_grad()
def integer_bias_shift(layer: nn.Module, batchnorm: nn.BatchNorm2d | None = None) -> torch.Tensor | None:
    """What to add to `layer`'s float output (per output channel, shape [out_channels]) so that it
    equals the integer layer's: the bias rounded to the int32 grid of scale input scale x weight
    scale, minus the bias (module docstring). With `batchnorm` (folded into the layer on export)
    the folded bias is rounded on the folded grid, and the shift is returned on the layer's side of
    the BatchNorm (divided by its factor), so BatchNorm(output + shift) is the integer result.

    None when the layer is not on integer grids (`weight_scales`, `act_grid`): nothing to emulate.
    Only meaningful in eval mode (training BatchNorm uses batch statistics, not the folded ones).
    """
    grid = act_grid(getattr(layer, "act_quantizer", None))
    weight_scale = weight_scales(layer)
    if grid is None or weight_scale is None:
        return None
    bias = layer.bias.detach().float() if layer.bias is not None else torch.zeros_like(weight_scale)
    input_scale = torch.tensor(grid[0], dtype=torch.float32, device=weight_scale.device)
    if batchnorm is None:
        step = input_scale * weight_scale
        return torch.round(bias / step) * step - bias
    factor = batchnorm_factor(batchnorm).detach().float()
    folded = (bias - batchnorm.running_mean.float()) * factor + (
        batchnorm.bias.detach().float() if batchnorm.affine else 0.0)
    step = input_scale * (weight_scale * factor.abs()).clamp(min=MIN_FOLDED_SCALE)
    shift = torch.round(folded / step) * step - folded
    return torch.where(factor != 0, shift / torch.where(factor != 0, factor, torch.ones_like(factor)), 0.0)
