"""Structured pruning: physically remove channels, with torch-pruning's dependency graph.

`prune_channels(model, ratio, criterion=...)` scores every group of coupled channels (a conv's
filters together with the BatchNorm, residual partners, concatenation slices and consumer inputs
that must shrink with them) and removes the lowest-scored ones, so MACs, parameters and dense
latency really drop. `scope="layer"` removes `ratio` of every group's channels; `scope="global"`
ranks all groups together and removes `ratio` of all channels. The layers producing the model's
output (the classifier) never lose outputs. `round_to=8` keeps channel counts multiples of 8.
`layer_ratios={"layers.2.*.conv1": 0.75}` gives chosen layers their own ratio (scope "layer"): the
ratio applies to the whole group of channels coupled with the layer.

Channel counts matter for real speed: on an AVX-512 CPU a resnet20 pruned to half its MACs with
11/22/45 channels was no faster in ONNX Runtime than the dense model (0.96x), while the same MACs
in multiples of 8 or 16 ran about 1.6x faster (BENCHMARKS.md): round to the target's vector width.

Channels that pass through a channel shuffle (`nn.ChannelShuffle` and subclasses, as in
ShuffleNetV2) are kept: the shuffle permutes them, which torch-pruning's index mapping does not
model (traced as reshape/transpose, its grouping of shufflenet_v2 had not finished after 2 minutes;
with the barrier below it takes about a second). Each shuffle gets a pruner that cuts the graph
there, and every group that reaches one is skipped; in ShuffleNetV2 that leaves the channels
inside each unit's branches, the stem and the head.

The whole plan (which channels of which group) is made and checked on the unchanged model, then
applied group by group, each group's indices mapped afresh: a concatenation's offsets move when an
earlier group shrinks one of its inputs (DenseNet). Nothing changes unless the whole plan is valid.

The new shapes are recorded as the `prune_channels` transform, and its replay resizes the same
modules of a freshly built model, so checkpoints of pruned models reload (weights then come from
the state dict).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from effdl.compress.prune.criteria import ThiNetImportance, make_importance
from effdl.compress.prune.selection import PRUNABLE_TYPES, check_fraction, matching
from effdl.errors import EffdlError
from effdl.measure.counting import profile
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


class _ShuffleBarrier(tp.pruner.BasePruningFunc):
    """torch-pruning pruner for a channel shuffle: its input and output channels are not coupled
    in the graph (distinct in/out functions), and groups reaching it are never pruned."""

    TARGET_MODULES = nn.ChannelShuffle

    def prune_out_channels(self, layer: nn.Module, idxs) -> nn.Module:
        raise EffdlError("internal error: channels around a channel shuffle cannot be pruned")

    def prune_in_channels(self, layer: nn.Module, idxs) -> nn.Module:
        raise EffdlError("internal error: channels around a channel shuffle cannot be pruned")

    def get_out_channels(self, layer: nn.Module) -> None:
        return None

    def get_in_channels(self, layer: nn.Module) -> None:
        return None


def _shuffle_barriers(model: nn.Module) -> dict[type, _ShuffleBarrier]:
    """A barrier for every channel-shuffle class in `model` (torch-pruning matches exact classes)."""
    return {type(m): _ShuffleBarrier() for m in model.modules() if isinstance(m, nn.ChannelShuffle)}


class _Pruner(tp.pruner.BasePruner):
    """torch-pruning's pruner, rounding kept channels to the nearest multiple (at least one) and
    leaving every group that reaches a channel shuffle whole."""

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        kept = current_channels - n_pruned
        kept = min(current_channels, max(round_to, round_to * round(kept / round_to)))
        return current_channels - kept

    def estimate_importance(self, group) -> torch.Tensor | None:
        if any(isinstance(item.dep.target.module, nn.ChannelShuffle) for item in group):
            return None  # torch-pruning skips groups without scores
        return super().estimate_importance(group)


def _refuse_emptying_layers(pruner: tp.pruner.BasePruner, names: dict[nn.Module, str]) -> None:
    """Make the pruner raise, instead of silently skipping a group that would empty a layer."""
    keeps_channels = pruner.DG.check_pruning_group

    def check(group) -> bool:
        if keeps_channels(group):
            return True
        layer = names.get(group[0].dep.target.module, "?")
        raise EffdlError(
            f"pruning would remove every channel of layer '{layer}'; lower the ratio or use scope 'layer'"
        )

    pruner.DG.check_pruning_group = check


def _ratios_by_layer(layers: dict[str, nn.Module], layer_ratios: dict[str, float]) -> dict[nn.Module, float]:
    """{layer: ratio} from {glob: ratio}; a layer matched by several patterns takes the last one's."""
    chosen: dict[nn.Module, float] = {}
    for pattern, value in layer_ratios.items():
        for name in sorted(matching(layers, [pattern])):
            chosen[layers[name]] = value
    return chosen


def _check_group_ratios(pruner: tp.pruner.BasePruner, chosen: dict[nn.Module, float], names: dict) -> None:
    """Refuse two different ratios for layers whose outputs are coupled (one group of channels).

    torch-pruning applies a chosen ratio to the whole group of the layer whose outputs it names, and
    would silently take whichever it met first.
    """
    for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                          root_module_types=pruner.root_module_types):
        ratios = {chosen[item.dep.target.module]: names[item.dep.target.module] for item in group
                  if item.dep.target.module in chosen and pruner.DG.is_out_channel_pruning_fn(item.dep.handler)}
        if len(ratios) > 1:
            detail = ", ".join(f"'{name}' {value:g}" for value, name in ratios.items())
            raise EffdlError(f"layers share channels (coupled), so they need one ratio: {detail}")


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
    layer_ratios: Mapping[str, float] | None = None,
) -> dict[str, tuple[int, int]]:
    """Remove `ratio` of the channels of `model` in place; returns {layer: (outputs before, after)}
    for the Conv/Linear layers that lost outputs.

    `criterion`: "l1" / "l2" filter norm, "bn-scale" (network slimming), "thinet" (needs a few
    `calibration` input batches; the consumers of pruned channels are then rescaled by least
    squares), or any torch-pruning Importance. `ignore`: layer-name globs whose outputs are kept
    whole (the classifier always is). `layer_ratios`: {layer glob: ratio}, later patterns winning,
    for scope "layer"; each ratio applies to the group of channels coupled with the matched layers.
    """
    ratio = check_fraction(ratio, "channel pruning ratio")
    layer_ratios = dict(layer_ratios or {})
    for pattern, value in layer_ratios.items():
        check_fraction(value, f"channel pruning ratio of '{pattern}'")
    if layer_ratios and scope != "layer":
        raise EffdlError("per-layer channel ratios need scope 'layer'")
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
    chosen = _ratios_by_layer(layers, layer_ratios)
    before = module_widths(model)
    if ratio == 0 and not any(chosen.values()):
        return {}
    pruner = _Pruner(
        model, example_inputs, importance, global_pruning=scope == "global", pruning_ratio=ratio,
        ignored_layers=ignored, round_to=round_to, customized_pruners=_shuffle_barriers(model),
        pruning_ratio_dict=chosen or None,
    )
    _refuse_emptying_layers(pruner, names)
    _check_group_ratios(pruner, chosen, names)
    # Plan and check every group first; each planned group's indices are right for the unchanged model.
    plan, removed_inputs = [], {}
    for group in pruner.step(interactive=True):
        plan.append((group[0].dep.target.module, group[0].dep.handler, list(group[0].idxs)))
        for item in group:
            layer = item.dep.target.module
            if isinstance(layer, PRUNABLE_TYPES) and pruner.DG.is_in_channel_pruning_fn(item.dep.handler):
                removed_inputs.setdefault(names[layer], set()).update(item.idxs)
    for root, handler, idxs in plan:
        pruner.DG.get_pruning_group(root, handler, idxs).prune()
    if isinstance(importance, ThiNetImportance):
        importance.reconstruct(model, removed_inputs)
    after = module_widths(model)
    changed = {name: spec for name, spec in after.items() if spec != before.get(name)}
    if changed:
        record_transform(model, TRANSFORM, {"modules": changed})
    widths = {name: (before[name]["tensors"]["weight"][0], after[name]["tensors"]["weight"][0]) for name in layers}
    return {name: (old, new) for name, (old, new) in widths.items() if old != new}


def prune_channels_to_macs(
    model: nn.Module, keep_macs: float, *, input_size: tuple[int, ...] = (1, 3, 32, 32), steps: int = 10, **kwargs
) -> float:
    """Prune in place until MACs are at most `keep_macs` of the original; returns the ratio used.

    The channel ratio is found by bisection on copies of the model, with the same criterion
    (ThiNet calibration runs once, on the original).
    """
    keep_macs = float(keep_macs)
    if not 0.0 < keep_macs < 1.0:
        raise EffdlError(f"the MAC fraction to keep must be in (0, 1), got {keep_macs}")
    example_inputs = default_inputs(model, input_size)
    criterion = kwargs.pop("criterion", "l1")
    if isinstance(criterion, str):
        criterion = make_importance(criterion, scope=kwargs.get("scope", "layer"), model=model,
                                    calibration=kwargs.pop("calibration", None))
    prune_channels(copy.deepcopy(model), 0.0, criterion=criterion, **kwargs)  # validates the options
    base = profile(model, input_size).macs
    low, fitting, failing = 0.0, None, 1.0  # fitting: smallest ratio known to meet the budget
    for _ in range(steps):
        ratio = (low + (fitting if fitting is not None else failing)) / 2
        trial = copy.deepcopy(model)
        try:
            prune_channels(trial, ratio, criterion=criterion, example_inputs=example_inputs, **kwargs)
        except EffdlError:  # would empty a layer: too much
            failing = ratio
            continue
        if profile(trial, input_size).macs <= keep_macs * base:
            fitting = ratio
        else:
            low = ratio
    if fitting is None:
        raise EffdlError(f"could not reach {keep_macs:.0%} of the MACs by channel pruning")
    prune_channels(model, fitting, criterion=criterion, example_inputs=example_inputs, **kwargs)
    return fitting
