"""Fold BatchNorm into the convolution before it (inference-time identity, fewer ops).

Conv -> BatchNorm2d pairs are found in the torch.fx graph: a BatchNorm2d module whose only input
is a plain nn.Conv2d module whose output feeds nothing else. If the model cannot be traced by
torch.fx, only pairs adjacent inside an nn.Sequential are folded (a warning says so).
Limits: functional batch norm (F.batch_norm), BatchNorm1d after Linear, BN before the conv, BN
without running statistics, and convs shared between call sites are left unfolded. The folded
model is an inference model: the BN is gone, so training it again trains without BatchNorm.
"""

from __future__ import annotations

import warnings

import torch
from torch import fx, nn

from effdl.core.edits import record_transform, register_transform
from effdl.core.modules import replace_submodule


def _pairs_from_graph(model: nn.Module) -> list[tuple[str, str]]:
    graph = fx.symbolic_trace(model).graph
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(model.get_submodule(node.target), nn.BatchNorm2d):
            continue
        source = node.args[0] if node.args else None
        if not isinstance(source, fx.Node) or source.op != "call_module":
            continue
        if type(model.get_submodule(source.target)) is not nn.Conv2d or len(source.users) != 1:
            continue
        if calls[source.target] == 1 and calls[node.target] == 1:
            pairs.append((source.target, node.target))
    return pairs


def _pairs_from_sequentials(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (a_name, a), (b_name, b) in zip(children, children[1:]):
            if type(a) is nn.Conv2d and isinstance(b, nn.BatchNorm2d):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + a_name, prefix + b_name))
    return pairs


def find_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, batchnorm name) pairs that can be folded."""
    try:
        pairs = _pairs_from_graph(model)
    except Exception as exc:  # noqa: BLE001  any tracing failure means: fall back
        warnings.warn(
            f"fold_batchnorm: torch.fx could not trace the model ({type(exc).__name__}); "
            "folding only Conv2d -> BatchNorm2d pairs adjacent in nn.Sequential",
            stacklevel=3,
        )
        pairs = _pairs_from_sequentials(model)
    return [(c, b) for c, b in pairs if model.get_submodule(b).running_mean is not None]


def batchnorm_factor(bn: nn.BatchNorm2d) -> torch.Tensor:
    """gamma / sqrt(running_var + eps) per channel: what folding `bn` multiplies the weights by."""
    inv_std = torch.rsqrt(bn.running_var + bn.eps)
    return bn.weight * inv_std if bn.affine else inv_std


@torch.no_grad()
def _fold_pair(model: nn.Module, conv_name: str, bn_name: str, values: bool) -> torch.Tensor | None:
    conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
    if conv.bias is None:
        conv.bias = nn.Parameter(torch.zeros(conv.out_channels, device=conv.weight.device, dtype=conv.weight.dtype))
    factor = None
    if values:
        factor = batchnorm_factor(bn)
        beta = bn.bias if bn.affine else torch.zeros_like(factor)
        conv.weight.mul_(factor.view(-1, 1, 1, 1))
        conv.bias.copy_((conv.bias - bn.running_mean) * factor + beta)
    replace_submodule(model, bn_name, nn.Identity())
    return factor


def fold_pair(model: nn.Module, conv_name: str, bn_name: str) -> torch.Tensor:
    """Fold the BatchNorm2d `bn_name` into the Conv2d `conv_name` in place (not recorded for replay);
    returns the per-output-channel factor gamma / sqrt(var + eps) the weight was multiplied by.

    The int8 exporter uses the factor: a weight on a per-channel grid of scale s, times the factor f,
    is on the grid of scale |f| s, so a BatchNorm after a quantized conv folds without re-rounding.
    """
    return _fold_pair(model, conv_name, bn_name, values=True)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every foldable BatchNorm2d into its convolution, in place; returns the model.

    Exact in eval mode (outputs equal up to float rounding). Recorded for checkpoint replay.
    """
    pairs = find_conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        _fold_pair(model, conv_name, bn_name, values=True)
    if pairs:
        record_transform(model, "fold_batchnorm", {"pairs": [list(p) for p in pairs]})
    return model


@register_transform("fold_batchnorm")
def _replay_fold(model: nn.Module, pairs: list[list[str]]) -> None:
    for conv_name, bn_name in pairs:
        _fold_pair(model, conv_name, bn_name, values=False)
