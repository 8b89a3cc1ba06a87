"""Structured pruning: physically remove channels, with torch-pruning's dependency graph.

`prune_channels(model, ratio, criterion=...)` scores every group of coupled channels (a conv's
filters together with the BatchNorm, residual partners, concatenation slices and consumer inputs
that must shrink with them) and removes the lowest-scored ones, so MACs, parameters and dense
latency really drop. `scope="layer"` removes `ratio` of every group's channels; `scope="global"`
ranks all groups together and removes `ratio` of all channels. The layers producing the model's
output (the classifier) never lose outputs. `round_to=8` keeps channel counts multiples of 8.

The new shapes are recorded as the `prune_channels` transform, and its replay resizes the same
modules of a freshly built model, so checkpoints of pruned models reload (weights then come from
the state dict). Everything is checked before the first module changes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from effdl.compress.prune.criteria import make_importance
from effdl.compress.prune.selection import PRUNABLE_TYPES, check_fraction, matching
from effdl.errors import EffdlError
from effdl.models.transforms import record_transform, register_transform

TRANSFORM = "prune_channels"
SCOPES = ("layer", "global")
# Attributes that describe a module's width; they are recorded with its tensors' shapes.
_WIDTH_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
                "num_parameters", "num_channels", "normalized_shape")


def default_inputs(model: nn.Module, shape: tuple[int, ...] = (1, 3, 32, 32)) -> torch.Tensor:
    """A random input batch on `model`'s device, for tracing the dependency graph."""
    param = next(model.parameters())
    return torch.randn(*shape, device=param.device)


def output_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[nn.Module]:
    """The Conv/Linear layer run last in a forward pass: its outputs are the model's classes."""
    order: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda mod, i, o: order.append(mod))
               for m in model.modules() if isinstance(m, PRUNABLE_TYPES)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return order[-1:]


def module_widths(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Width attributes and parameter/buffer shapes of every module that holds tensors."""
    widths = {}
    for name, module in model.named_modules():
        tensors = {k: list(v.shape) for k, v in [*module._parameters.items(), *module._buffers.items()] if v is not None}
        if tensors:
            attrs = {a: getattr(module, a) for a in _WIDTH_ATTRS if isinstance(getattr(module, a, None), (int, tuple))}
            widths[name] = {"attrs": {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.items()},
                            "tensors": tensors}
    return widths


@register_transform(TRANSFORM)
def resize_modules(model: nn.Module, modules: dict[str, dict[str, Any]]) -> nn.Module:
    """Replay: give the named modules the recorded widths (tensor values are placeholders)."""
    for name, spec in modules.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise EffdlError(f"pruned checkpoint names module '{name}', which the architecture lacks") from None
        for attr, value in spec["attrs"].items():
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
        for key, shape in spec["tensors"].items():
            if key in module._parameters:
                old = module._parameters[key]
                module._parameters[key] = nn.Parameter(old.new_empty(shape), requires_grad=old.requires_grad)
            elif key in module._buffers:
                module._buffers[key] = module._buffers[key].new_empty(shape)
            else:
                raise EffdlError(f"pruned checkpoint names tensor '{name}.{key}', which the architecture lacks")
    return model


class _Pruner(tp.pruner.BasePruner):
    """torch-pruning's pruner, rounding kept channels to the nearest multiple (at least one)."""

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        kept = current_channels - n_pruned
        kept = min(current_channels, max(round_to, round_to * round(kept / round_to)))
        return current_channels - kept


def _check_groups(pruner: tp.pruner.BasePruner, groups: list, names: dict[nn.Module, str]) -> None:
    for group in groups:
        for item in group:
            module, fn = item.dep.target.module, item.dep.handler
            if not pruner.DG.is_out_channel_pruning_fn(fn):
                continue
            channels = pruner.DG.get_out_channels(module)
            if channels is not None and len(set(item.idxs)) >= channels:
                raise EffdlError(
                    f"pruning would remove every channel of layer '{names.get(module, module)}' "
                    f"({channels} channels); lower the ratio or use scope 'layer'"
                )


def prune_channels(
    model: nn.Module,
    ratio: float,
    *,
    criterion: str | tp.importance.Importance = "l1",
    scope: str = "layer",
    round_to: int | None = None,
    example_inputs: torch.Tensor | None = None,
    calibration: Iterable[torch.Tensor] | None = None,
    ignore: Iterable[str] = (),
) -> dict[str, tuple[int, int]]:
    """Remove `ratio` of the channels of `model` in place; returns {layer: (outputs before, after)}.

    `criterion`: "l1" / "l2" filter norm, "bn-scale" (network slimming), "thinet" (needs a few
    `calibration` input batches), or any torch-pruning Importance. `ignore`: layer-name globs
    whose outputs are kept whole (the classifier always is).
    """
    ratio = check_fraction(ratio, "channel pruning ratio")
    if scope not in SCOPES:
        raise EffdlError(f"unknown pruning scope '{scope}'; use one of {', '.join(SCOPES)}")
    if round_to is not None and round_to < 1:
        raise EffdlError(f"round_to must be a positive channel count, got {round_to}")
    if example_inputs is None:
        example_inputs = default_inputs(model)
    importance = criterion if not isinstance(criterion, str) else make_importance(
        criterion, scope=scope, model=model, calibration=calibration
    )
    if hasattr(importance, "bind"):
        importance.bind(model)
    names = {m: n for n, m in model.named_modules()}
    layers = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    ignored = output_layers(model, example_inputs) + [layers[n] for n in matching(layers, ignore)]
    before = module_widths(model)
    if ratio == 0:
        return {}
    pruner = _Pruner(
        model, example_inputs, importance, global_pruning=scope == "global", pruning_ratio=ratio,
        ignored_layers=ignored, round_to=round_to,
    )
    groups = list(pruner.step(interactive=True))
    _check_groups(pruner, groups, names)
    for group in groups:
        group.prune()
    after = module_widths(model)
    changed = {name: spec for name, spec in after.items() if spec != before.get(name)}
    if changed:
        record_transform(model, TRANSFORM, {"modules": changed})
    return {
        name: (before[name]["tensors"]["weight"][0], after[name]["tensors"]["weight"][0])
        for name in layers if name in changed
    }


def count_macs(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of `example_inputs`, per example."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(example_inputs)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2 // example_inputs.shape[0]


def prune_channels_to_macs(
    model: nn.Module, keep_macs: float, *, example_inputs: torch.Tensor | None = None, steps: int = 10, **kwargs
) -> float:
    """Prune in place until MACs are at most `keep_macs` of the original; returns the ratio used.

    The channel ratio is found by bisection on copies of the model, with the same criterion
    (ThiNet calibration runs once, on the original).
    """
    keep_macs = float(keep_macs)
    if not 0.0 < keep_macs < 1.0:
        raise EffdlError(f"the MAC fraction to keep must be in (0, 1), got {keep_macs}")
    if example_inputs is None:
        example_inputs = default_inputs(model)
    criterion = kwargs.pop("criterion", "l1")
    if isinstance(criterion, str):
        criterion = make_importance(criterion, scope=kwargs.get("scope", "layer"), model=model,
                                    calibration=kwargs.pop("calibration", None))
    base = count_macs(model, example_inputs)
    low, high = 0.0, None
    for ratio in [0.5] + [None] * (steps - 1):
        ratio = ratio if ratio is not None else (low + high) / 2 if high is not None else (low + 1.0) / 2
        trial = copy.deepcopy(model)
        try:
            prune_channels(trial, ratio, criterion=criterion, example_inputs=example_inputs, **kwargs)
            fits = count_macs(trial, example_inputs) <= keep_macs * base
        except EffdlError:
            fits = False  # removed a whole layer: too much
            trial = None
        if fits:
            high = ratio
        else:
            low = ratio
    if high is None:
        raise EffdlError(f"could not reach {keep_macs:.0%} of the MACs by channel pruning")
    prune_channels(model, high, criterion=criterion, example_inputs=example_inputs, **kwargs)
    return high
