"""How layers declare their bit-widths to the scorers, and how those declarations are verified.

The counting engine and scorers never trust a configuration file: they read each layer.
A quantized layer is a subclass of `nn.Conv2d` / `nn.Linear` (so counting, pruning and export
still see a convolution) that sets these attributes:

    weight_bits: int | None       bits per stored weight value (None: not quantized)
    act_bits: int | None          bits of the activations this layer reads (None: not quantized)
    weight_per_channel: bool      True when each output channel has its own scale / codebook
    def quantized_weight(self) -> Tensor   the weight values actually used at inference

A layer that declares `weight_bits = b` must hold at most 2**b distinct weight values (per output
channel when `weight_per_channel`); `verify_weight_bits` raises an EffdlError otherwise. A layer
whose weight tensor is stored in float16/bfloat16 counts as 16-bit. Anything else counts as 32-bit.
Sparsity is always the measured fraction of exact zeros in the weight used at inference.

How the scorers use it (effdl.measure.scoring): parameter storage is counted at `weight_bits`
(biases and BN at their storage dtype); a conv/linear multiply costs max(weight_bits, act_bits)/32,
or 1/32 for 1-bit weights times float or 1-bit activations; any layer declaring fewer than 16 bits
cancels the MicroNet 16-bit freebie. A parameter used directly by a functional product (F.linear,
F.conv_transpose2d, addmm, einsum, x @ W or W @ x...) counts at its storage dtype, with its measured
sparsity, whichever operand it is. Pruning needs no declaration: unstructured pruning shows as
zeros in `quantized_weight()` (or `weight`), structured pruning as smaller tensors. A new quantizer
only has to implement the four members above; the scorers need no change.
"""

from __future__ import annotations

import torch
from torch import nn

from effdl.errors import EffdlError

FLOAT_BITS = {torch.float32: 32, torch.float64: 32, torch.float16: 16, torch.bfloat16: 16}


def inference_weight(module: nn.Module) -> torch.Tensor | None:
    """The weight `module` uses at inference (after quantization and pruning masks), if any."""
    if hasattr(module, "quantized_weight"):
        return module.quantized_weight().detach()
    weight = getattr(module, "weight", None)
    return weight.detach() if isinstance(weight, torch.Tensor) else None


def declared_weight_bits(module: nn.Module) -> int | None:
    """Weight bits a layer declares through the interface above (None if it declares none)."""
    return getattr(module, "weight_bits", None)


def has_quantized_layers(model: nn.Module) -> bool:
    """True when a layer of `model` declares its weight bits (a quantized layer)."""
    return any(declared_weight_bits(m) is not None for m in model.modules())


def weight_bits(module: nn.Module) -> int:
    """Bits per weight: declared by a quantizer, else from the storage dtype (16 or 32)."""
    declared = declared_weight_bits(module)
    if declared is not None:
        return int(declared)
    weight = getattr(module, "weight", None)
    return FLOAT_BITS.get(weight.dtype, 32) if isinstance(weight, torch.Tensor) else 32


def act_bits(module: nn.Module) -> int:
    """Bits of the activations `module` reads: declared by a quantizer, else 32 (or 16 if fp16)."""
    declared = getattr(module, "act_bits", None)
    if declared is not None:
        return int(declared)
    return 16 if weight_bits(module) == 16 and declared_weight_bits(module) is None else 32


def weight_sparsity(module: nn.Module) -> float:
    """Measured fraction of exact zeros in the inference weight (0 for layers without weight)."""
    w = inference_weight(module)
    if w is None or w.numel() == 0:
        return 0.0
    return float((w == 0).sum()) / w.numel()


def verify_weight_bits(module: nn.Module, name: str = "") -> None:
    """Raise EffdlError if a layer holds more distinct weight values than its declared bits allow."""
    bits = declared_weight_bits(module)
    if bits is None:
        return
    w = inference_weight(module)
    if w is None:
        return
    limit = 2 ** int(bits)
    per_channel = getattr(module, "weight_per_channel", False)
    groups = w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)
    worst = max(int(torch.unique(g).numel()) for g in groups)
    if worst > limit:
        where = "per channel " if per_channel else ""
        raise EffdlError(
            f"layer {name or type(module).__name__} declares {bits}-bit weights but holds "
            f"{worst} distinct values {where}(at most {limit} allowed)"
        )
