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

MIN_FOLDED_SCALE = 1e-12  # the least folded weight scale of a channel whose BatchNorm factor is not 0
CONSTANT_STEPS = 2**20  # where a channel with no weights puts its constant output on its bias grid
INTEGER_WEIGHT_KINDS = ("minmax", "lsq")  # weight quantizer kinds whose grids int8 can hold
INTEGER_ACT_KINDS = ("range", "lsq", "pact")  # activation quantizer kinds whose grids int8 can hold


def grid_bits(quantizer: nn.Module | None) -> bool:
    """Whether `quantizer` rounds to 2..8 bits (the widths an int8 grid holds)."""
    bits = getattr(quantizer, "bits", None)
    return isinstance(bits, int) and MIN_BITS <= bits <= MAX_BITS


def integer_layer_spec(spec: dict) -> bool:
    """Whether a quantized layer's spec puts its weights and its input on grids an integer runtime
    can hold (uniform, 2..8 bits: not binary weights, DoReFa, sign activations or k-means): only then
    do output quantizers, shared inputs and integer bias rounding mean anything."""
    def fits(part: dict | None, kinds: tuple[str, ...]) -> bool:
        return bool(part) and part.get("kind") in kinds and MIN_BITS <= part.get("bits", 0) <= MAX_BITS

    return fits(spec.get("weight"), INTEGER_WEIGHT_KINDS) and fits(spec.get("act"), INTEGER_ACT_KINDS)


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


def _act_scale(quantizer: nn.Module | None) -> torch.Tensor | None:
    """The scale of `act_grid` as a 0-dim float32 tensor, read without a host sync for LSQ and PACT
    (so that eval under torch.compile or torch.export stays one graph); None for other quantizers,
    while the quantizer observes a calibration, or before it knows its grid (first batch or loaded)."""
    if quantizer is None or not grid_bits(quantizer) or getattr(quantizer, "observing", None):
        return None
    if isinstance(quantizer, (LSQAct, PACTAct)):
        levels = quantizer.known_levels
        if levels is None:
            return None
        if isinstance(quantizer, LSQAct):
            return quantizer.step.detach().float().clamp(min=1e-8)
        return quantizer.alpha.detach().float().clamp(min=1e-6) / levels[1]  # signed PACT: +-alpha = +-highest
    if isinstance(quantizer, RangeAct) and bool(quantizer.ready):  # its own forward reads the range too
        return torch.tensor(quantizer.qparams()[0], dtype=torch.float32, device=quantizer.lo.device)
    return None


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
    scale = _act_scale(quantizer)
    if scale is None:
        return None
    if isinstance(quantizer, RangeAct):
        return float(scale), quantizer.qparams()[1], 0, 2**quantizer.bits - 1
    lowest, highest = quantizer.known_levels
    if isinstance(quantizer, LSQAct):
        return float(scale), int(lowest), 0, int(lowest + highest)
    return float(scale), int(lowest), int(lowest - highest) if lowest else 0, int(lowest + highest)  # PACT


def empty_channels(weight: torch.Tensor) -> torch.Tensor:
    """[out_channels] bool: the channels whose weights are all zero (their min-max scale is 1e-12)."""
    return weight.detach().flatten(1).abs().amax(1) == 0


def integer_weight_scales(weight_scale: torch.Tensor, factor: torch.Tensor, bias: torch.Tensor,
                          input_scale: torch.Tensor | float, empty: torch.Tensor) -> torch.Tensor:
    """Per-channel weight scales of the integer layer: |factor| x the layer's `weight_scale`, where
    `factor` is gamma / sqrt(var + eps) of the BatchNorm folded into it (ones without one): the
    integers stay the layer's (f * s * q = |f| s * sign(f) q). A channel with no weights (factor 0,
    or `empty`: all its weights zero) outputs its constant (folded) `bias`, and takes the scale that
    puts that bias exactly `CONSTANT_STEPS` steps of the int32 bias grid (input scale x weight
    scale) from 0, so the integer kernel adds it unrounded; a 1e-12 scale would need ~1e11 steps,
    beyond int32. Shapes: [out_channels] each; `input_scale` a scalar."""
    scale = (weight_scale * factor.abs()).clamp(min=MIN_FOLDED_SCALE)
    constant = torch.where(bias != 0, bias.abs() / (input_scale * CONSTANT_STEPS), weight_scale)
    return torch.where((factor == 0) | empty, constant, scale)


@torch.no_grad()
def integer_bias_shift(layer: nn.Module, batchnorm: nn.BatchNorm2d | None = None) -> torch.Tensor | None:
    """What to add to `layer`'s float output (per output channel, shape [out_channels]) so that it
    equals the integer layer's: the bias rounded to the int32 grid of scale input scale x weight
    scale (`integer_weight_scales`), minus the bias (module docstring). With `batchnorm` (folded into
    the layer on export) the folded bias is rounded on the folded grid, and the shift is returned on
    the layer's side of the BatchNorm (divided by its factor), so BatchNorm(output + shift) is the
    integer result; a channel with no weights needs none (its constant is on the grid exactly).

    None when the layer has neither bias nor BatchNorm, or is not on integer grids (`weight_scales`,
    `act_grid`): nothing to emulate. Tensor operations only (no host sync for LSQ / PACT inputs).
    Only meaningful in eval mode (training BatchNorm uses batch statistics, not the folded ones).
    """
    if layer.bias is None and batchnorm is None:
        return None
    weight_scale = weight_scales(layer)
    input_scale = _act_scale(getattr(layer, "act_quantizer", None)) if weight_scale is not None else None
    if input_scale is None:
        return None
    input_scale = input_scale.to(weight_scale.device)
    bias = layer.bias.detach().float() if layer.bias is not None else torch.zeros_like(weight_scale)
    factor = torch.ones_like(weight_scale)
    folded = bias
    if batchnorm is not None:
        factor = batchnorm_factor(batchnorm).detach().float()
        beta = batchnorm.bias.detach().float() if batchnorm.affine else torch.zeros_like(factor)
        folded = (bias - batchnorm.running_mean.float()) * factor + beta
    step = input_scale * integer_weight_scales(weight_scale, factor, folded, input_scale, empty_channels(layer.weight))
    shift = torch.round(folded / step) * step - folded
    live = factor != 0
    return torch.where(live, shift / torch.where(live, factor, torch.ones_like(factor)), torch.zeros_like(shift))
