"""Unstructured magnitude pruning: keep-masks over Conv/Linear weights, kept applied while training.

Design choice: masks live outside the model, as a `{layer name: bool tensor}` dict, and pruned
weights are set to exactly zero in place. While fine-tuning, `MaskCallback` re-applies the masks
after every optimizer step (and to the EMA copy, which the trainer updates before callbacks run).
The model therefore keeps its ordinary structure and state dict at all times: checkpoints written
mid-training reload as-is, ONNX export sees plain convolutions, and the scorers read the sparsity
as the measured fraction of exact zeros. `make_permanent` applies the masks a last time and strips
any `torch.nn.utils.prune` re-parametrisation a user may have added, leaving no mask buffer or hook.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from effdl.compress.prune.selection import check_fraction, matching, prunable_layers
from effdl.core.hooks import Callback
from effdl.errors import EffdlError
from effdl.measure.bits import inference_weight

Masks = dict[str, torch.Tensor]
SCOPES = ("global", "layer")


def layer_sparsities(
    layers: Mapping[str, nn.Module], sparsity: float | Mapping[str, float], scope: str
) -> dict[str, float] | float:
    """Validate `sparsity`: one global fraction, or a fraction per layer (names or globs)."""
    if scope not in SCOPES:
        raise EffdlError(f"unknown pruning scope '{scope}'; use one of {', '.join(SCOPES)}")
    if isinstance(sparsity, Mapping):
        targets: dict[str, float] = {}
        for pattern, value in sparsity.items():
            value = check_fraction(value, f"sparsity of '{pattern}'")
            for name in matching(layers, [pattern]):
                targets[name] = value
        return targets
    sparsity = check_fraction(sparsity)
    return sparsity if scope == "global" else {name: sparsity for name in layers}


def _keep_smallest_removed(scores: torch.Tensor, n_remove: int) -> torch.Tensor:
    """A bool keep-mask of `scores`' shape removing exactly the `n_remove` smallest entries."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if n_remove > 0:
        keep[torch.argsort(scores.flatten(), stable=True)[:n_remove]] = False
    return keep.view_as(scores)


@torch.no_grad()
def magnitude_masks(
    model: nn.Module,
    sparsity: float | Mapping[str, float],
    *,
    scope: str = "global",
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> Masks:
    """Keep-masks removing the smallest-|w| weights (L1 magnitude) of the selected layers.

    `scope="global"` ranks all selected weights together (layers end up with different sparsities);
    `scope="layer"` removes the same fraction from every layer. A mapping `{layer or glob: s}` gives
    per-layer targets (e.g. from a sensitivity scan); layers it does not name are left dense.
    The fraction removed is exact: round(s * n) weights.
    """
    layers = prunable_layers(model, include, exclude)
    targets = layer_sparsities(layers, sparsity, scope)
    weights = {name: inference_weight(m) for name, m in layers.items()}
    if isinstance(targets, float):
        flat = torch.cat([w.abs().flatten().float() for w in weights.values()])
        keep = _keep_smallest_removed(flat, round(targets * flat.numel()))
        masks, start = {}, 0
        for name, w in weights.items():
            masks[name] = keep[start : start + w.numel()].view_as(w).clone()
            start += w.numel()
        return masks
    return {
        name: _keep_smallest_removed(weights[name].abs().float(), round(s * weights[name].numel()))
        for name, s in targets.items()
    }


def current_masks(model: nn.Module, include: Iterable[str] | None = None) -> Masks:
    """Keep-masks of the weights that are non-zero now (to keep an already sparse model sparse)."""
    return {name: inference_weight(m) != 0 for name, m in prunable_layers(model, include).items()}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Set every masked-out weight of `model` to exactly zero."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        if name not in modules:
            raise EffdlError(f"mask for layer '{name}', which the model does not have")
        weight = modules[name].weight
        if mask.shape != weight.shape:
            raise EffdlError(f"mask for '{name}' has shape {tuple(mask.shape)}, weight {tuple(weight.shape)}")
        weight.mul_(mask.to(weight.device, weight.dtype))


def prune_magnitude(
    model: nn.Module,
    sparsity: float | Mapping[str, float],
    *,
    scope: str = "global",
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> Masks:
    """Magnitude-prune `model` in place (see `magnitude_masks`); returns the masks for fine-tuning."""
    masks = magnitude_masks(model, sparsity, scope=scope, include=include, exclude=exclude)
    apply_masks(model, masks)
    return masks


class MaskCallback(Callback):
    """Keeps pruned weights at zero during training: re-applies the masks after every step."""

    def __init__(self, masks: Masks):
        self.masks = masks

    def _apply(self, trainer) -> None:
        apply_masks(trainer.model, self.masks)
        ema = getattr(trainer, "ema", None)
        if ema is not None:
            apply_masks(ema.module, self.masks)

    def on_train_start(self, trainer) -> None:
        device = next(trainer.model.parameters()).device
        self.masks = {name: m.to(device) for name, m in self.masks.items()}
        self._apply(trainer)

    def on_after_step(self, trainer) -> None:
        self._apply(trainer)

    def on_train_end(self, trainer) -> None:
        self._apply(trainer)


def make_permanent(model: nn.Module, masks: Masks | None = None) -> nn.Module:
    """Bake pruning into plain weights: exact zeros, no mask buffers, no pruning hooks left."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(module, hook._tensor_name)
    if masks is not None:
        apply_masks(model, masks)
    return model


@dataclass(frozen=True)
class SparsityReport:
    """Measured fraction of exact zeros in Conv/Linear weights, overall and per layer."""

    zeros: int
    total: int
    per_layer: dict[str, float]

    @property
    def sparsity(self) -> float:
        return self.zeros / max(self.total, 1)


def measure_sparsity(model: nn.Module) -> SparsityReport:
    """Count exact zeros in every Conv/Linear inference weight of `model`."""
    zeros, total, per_layer = 0, 0, {}
    for name, module in prunable_layers(model).items():
        w = inference_weight(module)
        z = int((w == 0).sum())
        zeros, total = zeros + z, total + w.numel()
        per_layer[name] = z / max(w.numel(), 1)
    return SparsityReport(zeros, total, per_layer)
