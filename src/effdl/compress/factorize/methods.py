"""One class per factorization method: which layers it takes, its ranks, the chain it builds.

A `Method` answers, for one trained layer: can it be taken (`why_not`), which ranks are allowed
(`check_rank`, `candidate_ranks` in increasing cost), the rank keeping a fraction of the energy,
the specs of the smaller layers at a rank, and their weights (`factors`). With `round_to` set,
the candidate ranks are multiples of it or the layer's whole rank (`rounded`; AIMET's "multiplicity"):
CPU kernels work on blocks of 8 or 16 channels, so in ONNX Runtime a Tucker chain of rank 11 on a
16-channel 32x32 layer is slower than the layer it replaces, and one of rank 8 is not. The MACs of a chain are
counted from its specs and the layer's input shape (`chain_macs`), the same convolution arithmetic
as the counting engine, so rank choices against a MAC budget need no model trace per candidate.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from effdl.compress.factorize import decompose as dec
from effdl.compress.factorize.layers import conv_spec, linear_spec
from effdl.errors import EffdlError

Rank = int | tuple[int, int]


def conv_geometry(conv: nn.Conv2d) -> tuple[tuple[int, int], ...]:
    """(kernel, stride, padding, dilation) of `conv` as int pairs; EffdlError for padding it
    cannot split between two convolutions (a string padding other than resolvable 'same'/'valid')."""
    padding = conv.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same" and all((d * (k - 1)) % 2 == 0 for k, d in zip(conv.kernel_size, conv.dilation)):
            padding = tuple(d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation))
        else:
            raise EffdlError(f"padding='{padding}' with an even kernel cannot be split between factors")
    return tuple(conv.kernel_size), tuple(conv.stride), tuple(padding), tuple(conv.dilation)


def _conv_out(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def chain_macs(specs: list[dict[str, Any]], input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of a chain of conv2d/linear specs on one input of `input_shape` (batch
    1, e.g. (1, C, H, W)): per conv, out * in/groups * kh * kw * H_out * W_out; per linear,
    in * out * the input's positions."""
    shape = tuple(input_shape)
    total = 0
    for spec in specs:
        if spec["type"] == "conv2d":
            h, w = shape[-2:]
            (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (spec[k] for k in ("kernel", "stride", "padding", "dilation"))
            h, w = _conv_out(h, kh, sh, ph, dh), _conv_out(w, kw, sw, pw, dw)
            total += spec["out"] * (spec["in"] // spec["groups"]) * kh * kw * h * w
            shape = (*shape[:-3], spec["out"], h, w)
        else:
            positions = 1
            for d in shape[:-1]:
                positions *= d
            total += spec["in"] * spec["out"] * positions
            shape = (*shape[:-1], spec["out"])
    return total


def chain_params(specs: list[dict[str, Any]]) -> int:
    """Parameters of a chain of specs (weights and biases)."""
    total = 0
    for spec in specs:
        if spec["type"] == "conv2d":
            total += spec["out"] * (spec["in"] // spec["groups"]) * spec["kernel"][0] * spec["kernel"][1]
        else:
            total += spec["in"] * spec["out"]
        total += spec["out"] if spec["bias"] else 0
    return total


def _round_up(rank: int, multiple: int, limit: int) -> int:
    return min(limit, multiple * -(-rank // multiple))


def _cost_order(rank: Rank) -> tuple:
    """Sort key of ranks in increasing chain cost (a Tucker chain's core grows with r_out * r_in)."""
    return (rank[0] * rank[1], rank) if isinstance(rank, tuple) else (rank, rank)


class Method:
    """A factorization method over one kind of layer (see the module docstring)."""

    name = ""
    uses_energy = True  # whether singular values define a retained-energy rank
    round_to: int | None = None  # ranks a rule chooses are multiples of this (or the layer's full rank)

    def rounded(self, module: nn.Module, rank: Rank) -> Rank:
        """`rank` raised, per component, to the next multiple of `round_to`, at most the layer's
        full rank (unchanged without `round_to`): rounding toward keeping more, as pruning's
        round_to keeps more channels."""
        if not self.round_to:
            return rank
        limit = self.max_rank(module)
        if isinstance(rank, tuple):
            return tuple(_round_up(r, self.round_to, top) for r, top in zip(rank, limit))
        return _round_up(rank, self.round_to, limit)

    def why_not(self, module: nn.Module) -> str | None:
        """None if the method can take `module`, else why not (for errors and the skipped list)."""
        raise NotImplementedError

    def max_rank(self, module: nn.Module) -> Rank:
        raise NotImplementedError

    def check_rank(self, module: nn.Module, rank: int, name: str) -> Rank:
        """The layer's rank for a requested int `rank`; EffdlError if below 1 or above what it allows."""
        limit = self.max_rank(module)
        top = min(limit) if isinstance(limit, tuple) else limit
        if rank < 1 or rank > top:
            raise EffdlError(f"rank {rank} is outside what {self.name} allows for layer '{name}' (1..{top}); "
                             "pass a rank in range, exclude the layer (--exclude), or use --ratio/--energy")
        return (rank, rank) if isinstance(limit, tuple) else rank

    def candidate_ranks(self, module: nn.Module) -> list[Rank]:
        """Every rank worth trying (multiples of `round_to` when set), in increasing cost."""
        return sorted({self.rounded(module, r) for r in self._candidates(module)}, key=_cost_order)

    def _candidates(self, module: nn.Module) -> list[Rank]:
        return list(range(1, self.max_rank(module) + 1))

    def energy_rank(self, module: nn.Module, energy: float) -> Rank:
        raise EffdlError(f"{self.name} has no singular values to keep a fraction of: use a rank, a ratio or "
                         "a MAC target")

    def specs(self, module: nn.Module, rank: Rank | None) -> list[dict[str, Any]]:
        raise NotImplementedError

    def factors(self, module: nn.Module, rank: Rank | None, gram: torch.Tensor | None = None) -> list[torch.Tensor]:
        raise NotImplementedError


def _standard_conv(module: nn.Module, *, kernel_above_one: bool = True) -> str | None:
    if not isinstance(module, nn.Conv2d):
        return f"a {type(module).__name__}, not a Conv2d"
    if module.groups != 1:
        return f"a grouped convolution ({module.groups} groups)" if module.groups != module.in_channels \
            else "a depthwise convolution"
    if module.padding_mode != "zeros":
        return f"padding mode '{module.padding_mode}'"
    if kernel_above_one and module.kernel_size == (1, 1):
        return "a 1x1 convolution (use svd)"
    try:
        conv_geometry(module)
    except EffdlError as exc:
        return str(exc)
    return None


class SVD(Method):
    """Linear (O, I) -> Linear(I, r) then Linear(r, O); a 1x1 convolution -> two 1x1 convolutions."""

    name = "svd"

    def why_not(self, module: nn.Module) -> str | None:
        if isinstance(module, nn.Linear):
            return None
        if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1):
            return _standard_conv(module, kernel_above_one=False)
        return f"a {type(module).__name__}{' with a spatial kernel (use tucker, cp or spatial-svd)' if isinstance(module, nn.Conv2d) else ''}; svd takes Linear and 1x1 Conv2d layers"

    def _matrix(self, module: nn.Module) -> torch.Tensor:
        return module.weight.reshape(module.weight.shape[0], -1)

    def max_rank(self, module: nn.Module) -> int:
        return min(self._matrix(module).shape)

    def energy_rank(self, module: nn.Module, energy: float) -> int:
        return dec.energy_rank(dec.singular_values(self._matrix(module)), energy)

    def specs(self, module: nn.Module, rank: int) -> list[dict[str, Any]]:
        bias = module.bias is not None
        if isinstance(module, nn.Linear):
            return [linear_spec(module.in_features, rank), linear_spec(rank, module.out_features, bias)]
        _, stride, padding, dilation = conv_geometry(module)
        return [conv_spec(module.in_channels, rank, (1, 1), stride=stride, padding=padding, dilation=dilation),
                conv_spec(rank, module.out_channels, (1, 1), bias=bias)]

    def factors(self, module: nn.Module, rank: int, gram: torch.Tensor | None = None) -> list[torch.Tensor]:
        first, second = dec.svd_factors(self._matrix(module), rank)
        if isinstance(module, nn.Conv2d):
            first, second = first[:, :, None, None], second[:, :, None, None]
        return [first, second]


class SpatialSVD(Method):
    """kh x kw convolution -> kh x 1 to r channels, then 1 x kw (AIMET's spatial SVD)."""

    name = "spatial_svd"

    def why_not(self, module: nn.Module) -> str | None:
        why = _standard_conv(module)
        if why is None and min(module.kernel_size) < 2:
            return f"a {module.kernel_size[0]}x{module.kernel_size[1]} kernel (spatial SVD needs both sides > 1)"
        return why

    def max_rank(self, module: nn.Module) -> int:
        return min(dec.spatial_matrix(module.weight).shape)

    def energy_rank(self, module: nn.Module, energy: float) -> int:
        return dec.energy_rank(dec.singular_values(dec.spatial_matrix(module.weight)), energy)

    def specs(self, module: nn.Conv2d, rank: int) -> list[dict[str, Any]]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv_geometry(module)
        return [conv_spec(module.in_channels, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1)),
                conv_spec(rank, module.out_channels, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw),
                          bias=module.bias is not None)]

    def factors(self, module: nn.Conv2d, rank: int, gram: torch.Tensor | None = None) -> list[torch.Tensor]:
        return list(dec.spatial_svd_factors(module.weight, rank))


class Tucker2(Method):
    """kxk convolution -> 1x1 (I -> r_in), kxk core (r_in -> r_out), 1x1 (r_out -> O)."""

    name = "tucker2"

    def why_not(self, module: nn.Module) -> str | None:
        return _standard_conv(module)

    def max_rank(self, module: nn.Conv2d) -> tuple[int, int]:
        return module.out_channels, module.in_channels

    def _candidates(self, module: nn.Conv2d) -> list[tuple[int, int]]:
        o, i = module.out_channels, module.in_channels
        steps = max(o, i)
        return [(max(1, min(o, round(s * o / steps))), max(1, min(i, round(s * i / steps)))) for s in range(1, steps + 1)]

    def energy_rank(self, module: nn.Conv2d, energy: float) -> tuple[int, int]:
        w = module.weight
        return (dec.energy_rank(dec.singular_values(w.reshape(w.shape[0], -1)), energy),
                dec.energy_rank(dec.singular_values(w.transpose(0, 1).reshape(w.shape[1], -1)), energy))

    def vbmf_rank(self, module: nn.Conv2d) -> tuple[int, int]:
        """(r_out, r_in) by VBMF on the mode-0 and mode-1 unfoldings (Kim et al. 2016's rule)."""
        w = module.weight
        return (dec.vbmf_rank(w.reshape(w.shape[0], -1))[0], dec.vbmf_rank(w.transpose(0, 1).reshape(w.shape[1], -1))[0])

    def specs(self, module: nn.Conv2d, rank: tuple[int, int]) -> list[dict[str, Any]]:
        r_out, r_in = rank
        kernel, stride, padding, dilation = conv_geometry(module)
        return [conv_spec(module.in_channels, r_in, (1, 1)),
                conv_spec(r_in, r_out, kernel, stride=stride, padding=padding, dilation=dilation),
                conv_spec(r_out, module.out_channels, (1, 1), bias=module.bias is not None)]

    def factors(self, module: nn.Conv2d, rank: tuple[int, int], gram: torch.Tensor | None = None) -> list[torch.Tensor]:
        return list(dec.tucker2_factors(module.weight, rank))


class CP(Method):
    """kxk convolution -> 1x1 (I -> R), kx1 depthwise, 1xk depthwise, 1x1 (R -> O)."""

    name = "cp"
    uses_energy = False

    def __init__(self, seed: int = 0):
        self.seed = seed

    def why_not(self, module: nn.Module) -> str | None:
        return _standard_conv(module)

    def max_rank(self, module: nn.Conv2d) -> int:
        dims = tuple(module.weight.shape)
        total = 1
        for d in dims:
            total *= d
        return total // max(dims)  # no tensor of these dimensions has a larger CP rank

    def _candidates(self, module: nn.Conv2d) -> list[int]:
        # beyond min(O, I) * k the chain costs more than the layer: no budget picks it
        return list(range(1, min(self.max_rank(module), max(module.in_channels, module.out_channels) * 4) + 1))

    def specs(self, module: nn.Conv2d, rank: int) -> list[dict[str, Any]]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv_geometry(module)
        return [conv_spec(module.in_channels, rank, (1, 1)),
                conv_spec(rank, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), groups=rank),
                conv_spec(rank, rank, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw), groups=rank),
                conv_spec(rank, module.out_channels, (1, 1), bias=module.bias is not None)]

    def factors(self, module: nn.Conv2d, rank: int, gram: torch.Tensor | None = None) -> list[torch.Tensor]:
        return list(dec.cp_factors(module.weight, rank, seed=self.seed))


class Grouped(Method):
    """kxk convolution -> grouped kxk (`groups` groups, O channels; depthwise: I groups, I channels)
    then a 1x1 mixing convolution; fitted by least squares on input activations (no rank)."""

    uses_energy = False

    def __init__(self, groups: int | None):
        self.groups = groups  # None: depthwise
        self.name = "depthwise" if groups is None else "grouped"

    def why_not(self, module: nn.Module) -> str | None:
        why = _standard_conv(module)
        if why is None and self.groups is not None:
            if module.in_channels % self.groups or module.out_channels % self.groups:
                return f"{module.in_channels} in / {module.out_channels} out channels, not divisible by {self.groups} groups"
        return why

    def _shape(self, module: nn.Conv2d) -> tuple[int, int]:
        return (module.in_channels, module.in_channels) if self.groups is None else (self.groups, module.out_channels)

    def specs(self, module: nn.Conv2d, rank: None = None) -> list[dict[str, Any]]:
        groups, mid = self._shape(module)
        kernel, stride, padding, dilation = conv_geometry(module)
        return [conv_spec(module.in_channels, mid, kernel, stride=stride, padding=padding, dilation=dilation,
                          groups=groups),
                conv_spec(mid, module.out_channels, (1, 1), bias=module.bias is not None)]

    def factors(self, module: nn.Conv2d, rank: None = None, gram: torch.Tensor | None = None) -> list[torch.Tensor]:
        groups, mid = self._shape(module)
        return list(dec.fit_grouped(module.weight, groups, mid, gram))
