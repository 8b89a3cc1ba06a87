"""Structured pruning: physically remove channels, with torch-pruning's dependency graph.

`prune_channels(model, ratio, criterion=...)` scores every group of coupled channels (a conv's
filters together with the BatchNorm, residual partners, concatenation slices and consumer inputs
that must shrink with them) and removes the lowest-scored ones, so MACs, parameters and dense
latency really drop. `scope="layer"` removes `ratio` of every group's channels, rounded down: a
layer asked to lose 10% never loses more; `scope="global"` ranks all groups together and removes
`ratio` of all channels. The layers producing the model's output (the classifier) never lose
outputs. `round_to=8` keeps channel counts multiples of 8, rounding toward keeping more channels.
`layer_ratios={"layers.2.*.conv1": 0.75}` gives chosen layers their own ratio (scope "layer"): the
ratio applies to the whole group of channels coupled with the layer.

Channel counts matter for real speed: on an AVX-512 CPU a resnet20 pruned to half its MACs with
11/22/45 channels was no faster in ONNX Runtime than the dense model (0.96x), while the same MACs
in multiples of 8 or 16 ran about 1.6x faster (BENCHMARKS.md): round to the target's vector width.

Some channels are left whole, listed in the result's `skipped` ({layer: why}) and in a warning:
- around a channel shuffle (`nn.ChannelShuffle` and subclasses, as in ShuffleNetV2): the shuffle
  permutes them, which torch-pruning's index mapping does not model (traced as reshape/transpose,
  its grouping of shufflenet_v2 had not finished after 2 minutes; with the barrier below it takes
  about a second). In ShuffleNetV2 that leaves the channels inside each unit's branches, the stem
  and the head;
- into or out of a grouped convolution (groups > 1, not depthwise): torch-pruning would have to
  remove the same channels in every group. Depthwise convs shrink with their producer;
- coupled in blocks: a view/reshape from a Linear's features into a conv's channels (or the
  like) couples every channel with a block of another layer's, so removing the chosen channels
  would remove many more (87.5% of a Linear's outputs for a 10% ratio, once). Channels of one
  layer coupled with each other (GhostNet concatenates a conv's maps with their cheap depthwise
  copies: channel j goes with channel j + C/2 of the sum after it) are removed in whole units;
- crossing a view/reshape or a slice, when the model pruned through it did not match (a hard-coded
  shape, GhostNet's cut of an odd channel count).
  Flattening conv channels into a Linear is followed exactly, so it is pruned and checked.

The whole plan (which channels of which group) is made on the unchanged model, then applied group
by group, each group's indices mapped afresh: a concatenation's offsets move when an earlier group
shrinks one of its inputs (DenseNet). Then every pruning is checked: in eval mode, on the sample
input, the pruned model must run and give the outputs of the original with the removed channels
zeroed where they are read (inputs of the consuming Conv/Linear layers), within a float tolerance.
A pruning that fails is undone; pruning is retried once with the groups crossing a view/reshape or slice
left whole, and otherwise raises EffdlError with the model as it was.

The new shapes are recorded as the `prune_channels` transform, and its replay resizes the same
modules of a freshly built model, so checkpoints of pruned models reload (weights then come from
the state dict).
"""

from __future__ import annotations

import copy
import itertools
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from effdl.compress.prune.criteria import ThiNetImportance, make_importance
from effdl.compress.prune.selection import PRUNABLE_TYPES, check_fraction, matching
from effdl.core.edits import record_transform, register_transform
from effdl.core.modules import eval_mode, output_leaves
from effdl.errors import EffdlError
from effdl.measure.counting import profile
from effdl.models.registry import example_input_shape, model_input_size

TRANSFORM = "prune_channels"
SCOPES = ("layer", "global")
# Attributes that describe a module's width; they are recorded with its tensors' shapes.
_WIDTH_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
                "num_parameters", "num_channels", "normalized_shape")


def default_inputs(model: nn.Module, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """A random input batch of `shape` (default: one input of `model_input_size(model)`, i.e.
    (1, C, H, W)) on `model`'s device, for tracing the dependency graph and checking the pruning."""
    param = next(model.parameters())
    shape = tuple(shape) if shape is not None else (1, *model_input_size(model))
    return torch.randn(*shape, device=param.device, dtype=param.dtype if param.is_floating_point() else None)


def output_layers(model: nn.Module, example_inputs: torch.Tensor) -> list[nn.Module]:
    """The Conv/Linear layers whose output channels reach a model output without passing another
    Conv/Linear: their channel counts are the shapes of the outputs (the classes of the logits, and
    e.g. the feature width of a model that also returns its features), so they are kept whole.

    Found by walking the autograd graph back from every output leaf (dict and tuple outputs too),
    stopping at the first Conv/Linear on each path.
    """
    produced: dict[Any, nn.Module] = {}

    def remember(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:  # returns None: output unchanged
        produced.setdefault(output.grad_fn, module)

    handles = [m.register_forward_hook(remember) for m in model.modules() if isinstance(m, PRUNABLE_TYPES)]
    try:
        with eval_mode(model), torch.enable_grad():
            outputs = output_leaves(model(example_inputs))
    finally:
        for h in handles:
            h.remove()
    found: list[nn.Module] = []
    seen: set[Any] = set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in produced:
            if produced[fn] not in found:
                found.append(produced[fn])
            continue
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return found


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


def _ratios_by_layer(layers: dict[str, nn.Module], layer_ratios: dict[str, float]) -> dict[nn.Module, float]:
    """{layer: ratio} from {glob: ratio}; a layer matched by several patterns takes the last one's."""
    chosen: dict[nn.Module, float] = {}
    for pattern, value in layer_ratios.items():
        for name in sorted(matching(layers, [pattern])):
            chosen[layers[name]] = value
    return chosen


def _check_group_ratios(dg: tp.DependencyGraph, chosen: dict[nn.Module, float], names: dict,
                        ignored: list[nn.Module]) -> None:
    """Refuse two different ratios for layers whose outputs are coupled (one group of channels).

    A ratio applies to the whole group of the layer it names; with two, one would silently win.
    """
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=list(PRUNABLE_TYPES)):
        ratios = {chosen[m]: names[m] for m in _producers(dg, group) if m in chosen}
        if len(ratios) > 1:
            detail = ", ".join(f"'{name}' {value:g}" for value, name in ratios.items())
            raise EffdlError(f"layers share channels (coupled), so they need one ratio: {detail}")


class PrunedChannels(dict):
    """What `prune_channels` did: {layer: (outputs before, outputs after)} for the Conv/Linear layers
    that lost outputs, plus `skipped` ({layer: why}) for layers left whole although the ratio asked
    for some of their channels, and `ratio` (the channel ratio used)."""

    def __init__(self, changed: Mapping[str, tuple[int, int]] = (), skipped: Mapping[str, str] | None = None,
                 ratio: float = 0.0):
        super().__init__(changed)
        self.skipped = dict(skipped or {})
        self.ratio = ratio


@dataclass
class _Plan:
    """Which channels go, every index numbered as in the unchanged model."""

    steps: list[tuple[nn.Module, Any, list[int]]] = field(default_factory=list)  # (root layer, handler, indices)
    removed_inputs: dict[nn.Module, set[int]] = field(default_factory=dict)  # consumer layer -> its inputs removed
    skipped: dict[str, str] = field(default_factory=dict)  # layer name -> why it stays whole
    through_reshape: set[nn.Module] = field(default_factory=set)  # producers whose channels cross a reshape/slice


def _is_grouped_conv(module: nn.Module) -> bool:
    """A grouped convolution that torch-pruning cannot shrink correctly: groups > 1 and not depthwise
    (groups == in == out, which it prunes channel by channel through both sides)."""
    return (isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
            and not module.groups == module.in_channels == module.out_channels)


def _producers(dg: tp.DependencyGraph, group) -> list[nn.Module]:
    """The Conv/Linear layers of `group` whose outputs are removed."""
    found = []
    for item in group:
        module = item.dep.target.module
        if isinstance(module, PRUNABLE_TYPES) and dg.is_out_channel_pruning_fn(item.dep.handler) and module not in found:
            found.append(module)
    return found


def _whole_reason(group, names: dict[nn.Module, str]) -> str | None:
    """Why the channels of `group` cannot be removed at all, or None."""
    for item in group:
        module = item.dep.target.module
        if isinstance(module, nn.ChannelShuffle):
            return "its channels pass through a channel shuffle, which permutes them"
        if _is_grouped_conv(module):
            return (f"its channels reach the grouped convolution '{names.get(module, '?')}' (groups={module.groups}), "
                    "which is not pruned")
    return None


def _removal_count(channels: int, ratio: float, round_to: int | None) -> int:
    """How many of `channels` to remove for `ratio`: never more than the ratio allows (floor)."""
    return _rounded_removal(channels, math.floor(ratio * channels + 1e-9), round_to)  # 1e-9: 0.29 * 100 = 28.99..


def _rounded_removal(channels: int, removed: int, round_to: int | None) -> int:
    """`removed`, lowered so that the kept count is a multiple of `round_to` (or all channels):
    rounding keeps more channels, never fewer."""
    if round_to and removed:
        removed = channels - min(channels, round_to * math.ceil((channels - removed) / round_to))
    return removed


def _uneven_coupling(dg: tp.DependencyGraph, group, chosen: int, total: int, names: dict) -> str | None:
    """Why removing `chosen` of the root's `total` channels would remove a larger share of some
    coupled module (a view/reshape maps one channel to a block of another layer's, and back), or None."""
    removed: dict[nn.Module, set[int]] = {}
    consumers: dict[nn.Module, set[int]] = {}
    for item in group:
        module = item.dep.target.module
        if dg.is_out_channel_pruning_fn(item.dep.handler):
            removed.setdefault(module, set()).update(item.idxs)
        elif isinstance(module, PRUNABLE_TYPES) and dg.is_in_channel_pruning_fn(item.dep.handler):
            consumers.setdefault(module, set()).update(item.idxs)

    def share(module: nn.Module, idxs: set[int], size_of) -> float:
        size = size_of(module) if module in dg.module2node else None
        return len(idxs) / size if size else 0.0

    for module, idxs in removed.items():
        if share(module, idxs, dg.get_out_channels) * total > chosen + 1e-9:
            via = max(consumers, key=lambda m: share(m, consumers[m], dg.get_in_channels), default=None)
            into = f" into '{names.get(via, '?')}'" if via is not None else ""
            return (f"its channels are coupled in blocks{into} (as through a view/reshape): removing {chosen} of {total} "
                    f"would remove {len(idxs)} of the {dg.get_out_channels(module)} of '{names.get(module, '?')}'")
    return None


def _removed_from(dg: tp.DependencyGraph, group, module: nn.Module) -> set[int]:
    """The output channels of `module` that pruning `group` removes."""
    return {i for item in group if item.dep.target.module is module and dg.is_out_channel_pruning_fn(item.dep.handler)
            for i in item.idxs}


def _whole_units(dg: tp.DependencyGraph, root: nn.Module, handler, order: list[int], count: int) -> list[int]:
    """At most `count` channels of `root`, taken in `order` (lowest score first) each with every
    channel of the root the dependency graph removes with it, skipping a unit that would overshoot."""
    taken: set[int] = set()
    for idx in order:
        if len(taken) == count:
            break
        if idx not in taken:
            unit = _removed_from(dg, dg.get_pruning_group(root, handler, [idx]), root) | {idx}
            if len(taken | unit) <= count:
                taken |= unit
    return sorted(taken)


def _plan(dg: tp.DependencyGraph, importance, ratio: float, *, scope: str, round_to: int | None,
          ignored: list[nn.Module], chosen: dict[nn.Module, float], names: dict[nn.Module, str],
          keep_whole: set[nn.Module]) -> _Plan:
    """Score every group of coupled channels and choose which to remove; nothing changes yet."""
    plan = _Plan()
    candidates = []  # (group, ratio, scores)
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=list(PRUNABLE_TYPES)):
        producers = _producers(dg, group)
        group_ratio = next((chosen[m] for m in producers if m in chosen), ratio)
        if group_ratio == 0:
            continue
        reason = _whole_reason(group, names)
        if reason is None and keep_whole.intersection(producers):
            reason = ("its channels cross a view/reshape or slice, and the model pruned through it did not match "
                      "the original")
        scores = importance(group) if reason is None else None
        if reason is None and scores is None:
            reason = "the criterion gives its channels no score"
        if reason is not None:
            plan.skipped.update({names[m]: reason for m in producers})
            continue
        candidates.append((group, group_ratio, scores.detach().float().cpu()))

    if scope == "global":  # the lowest scores of all groups together, exactly `ratio` of all channels
        total, picks = sum(len(scores) for _, _, scores in candidates), []
        if candidates:
            lowest = torch.argsort(torch.cat([s for _, _, s in candidates]), stable=True)[:_removal_count(total, ratio, None)]
            offsets = torch.tensor([0, *itertools.accumulate(len(s) for _, _, s in candidates)])
            for i, (group, _, scores) in enumerate(candidates):
                removed = int(((lowest >= offsets[i]) & (lowest < offsets[i + 1])).sum())
                if removed == len(scores):
                    raise EffdlError(f"pruning would remove every channel of layer '{names[group[0].dep.target.module]}'; "
                                     "lower the ratio or use scope 'layer'")
                # the group's share of the global lowest are its own lowest (same stable order)
                picks.append(torch.argsort(scores, stable=True)[:_rounded_removal(len(scores), removed, round_to)].tolist())
    else:
        picks = [torch.argsort(scores, stable=True)[:_removal_count(len(scores), r, round_to)].tolist()
                 for _, r, scores in candidates]

    for (group, _, scores), idxs in zip(candidates, picks):
        if not idxs:
            continue
        root, handler = group[0].dep.target.module, group[0].dep.handler
        idxs = sorted(idxs)
        chosen_group = dg.get_pruning_group(root, handler, idxs)
        crosses_reshape = any(item.dep.target.type == tp.ops.OPTYPE.RESHAPE for item in chosen_group)
        if not crosses_reshape and len(_removed_from(dg, chosen_group, root)) > len(idxs):
            # The root's channels are coupled with each other (GhostNet's concatenation of a conv's
            # maps and their cheap copies: channel j goes with j + C/2): choose whole units. Not
            # through a view/reshape, whose index mapping torch-pruning does not always get right.
            asked = len(idxs)
            idxs = _whole_units(dg, root, handler, torch.argsort(scores, stable=True).tolist(), asked)
            if not idxs:
                plan.skipped.update({names[m]: f"its channels go in coupled units larger than the {asked} the ratio "
                                     "allows it to lose" for m in _producers(dg, group)})
                continue
            chosen_group = dg.get_pruning_group(root, handler, idxs)
        reason = _uneven_coupling(dg, chosen_group, len(idxs), len(scores), names)
        if reason is None and not dg.check_pruning_group(chosen_group):
            reason = "removing its channels would empty a coupled module"
        if reason is not None:
            plan.skipped.update({names[m]: reason for m in _producers(dg, group)})
            continue
        plan.steps.append((root, handler, idxs))
        for item in chosen_group:
            layer = item.dep.target.module
            if isinstance(layer, PRUNABLE_TYPES) and dg.is_in_channel_pruning_fn(item.dep.handler):
                plan.removed_inputs.setdefault(layer, set()).update(item.idxs)
        if any(item.dep.target.type in (tp.ops.OPTYPE.RESHAPE, tp.ops.OPTYPE.SLICE) for item in chosen_group):
            plan.through_reshape.update(_producers(dg, group))
    return plan


def _outputs(model: nn.Module, inputs: torch.Tensor, zeroed_inputs: dict[nn.Module, set[int]] | None = None
             ) -> list[torch.Tensor]:
    """The output tensors of `model` on `inputs` in eval mode, with the given input channels of the
    given Conv/Linear layers zeroed (zero inputs are what removed channels contribute: nothing)."""

    def zero(indices: list[int]):
        def hook(layer: nn.Module, args: tuple) -> tuple:
            x = args[0].clone()
            if isinstance(layer, nn.Linear):
                x[..., indices] = 0
            else:
                x[:, indices] = 0
            return (x, *args[1:])
        return hook

    handles = [layer.register_forward_pre_hook(zero(sorted(idxs))) for layer, idxs in (zeroed_inputs or {}).items()]
    try:
        with eval_mode(model), torch.no_grad():
            return [t.detach().float() for t in output_leaves(model(inputs))]
    finally:
        for h in handles:
            h.remove()


def _mismatch(model: nn.Module, inputs: torch.Tensor, expected: list[torch.Tensor], tolerance: float) -> str | None:
    """How the pruned `model`'s outputs differ from `expected` (the original's with the removed
    channels zeroed), or None when they agree within `tolerance` x (largest |expected| + 1e-6):
    relative, as untrained models can have tiny outputs; fp32 summation order changes by ~1e-7."""
    try:
        got = _outputs(model, inputs)
    except Exception as exc:  # noqa: BLE001 - any failure of the pruned model is the finding
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"fails on its input ({first_line})"
    if [t.shape for t in got] != [t.shape for t in expected]:
        return f"gives outputs of shape {[list(t.shape) for t in got]}, not {[list(t.shape) for t in expected]}"
    for g, e in zip(got, expected):
        error = float((g - e).abs().max()) if g.numel() else 0.0
        allowed = tolerance * ((float(e.abs().max()) if e.numel() else 0.0) + 1e-6)
        if not error <= allowed:  # also catches NaN
            return f"differs from the original with those channels zeroed by {error:.3g} (allowed {allowed:.3g})"
    return None


def _snapshot(model: nn.Module) -> list[tuple[nn.Module, dict, dict, dict]]:
    """Every module's parameters, buffers and width attributes (torch-pruning replaces tensors, it
    does not write into them, so references are enough to put the model back)."""
    return [(m, dict(m._parameters), dict(m._buffers),
             {a: getattr(m, a) for a in _WIDTH_ATTRS if hasattr(m, a)}) for m in model.modules()]


def _restore(snapshot: list[tuple[nn.Module, dict, dict, dict]]) -> None:
    for module, params, buffers, attrs in snapshot:
        module._parameters.clear()
        module._parameters.update(params)
        module._buffers.clear()
        module._buffers.update(buffers)
        for attr, value in attrs.items():
            setattr(module, attr, value)


def _warn_skipped(skipped: dict[str, str]) -> None:
    by_reason: dict[str, list[str]] = {}
    for name, reason in skipped.items():
        by_reason.setdefault(reason, []).append(name)
    detail = "; ".join(f"{', '.join(names)}: {reason}" for reason, names in by_reason.items())
    warnings.warn(f"prune_channels left {len(skipped)} layer(s) whole: {detail}", stacklevel=3)


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
    tolerance: float = 1e-4,
) -> PrunedChannels:
    """Remove `ratio` of the channels of `model` in place, checked; returns a `PrunedChannels`:
    {layer: (outputs before, after)} for the Conv/Linear layers that lost outputs, with `.skipped`
    ({layer: why}) for layers left whole (also warned about).

    `criterion`: "l1" / "l2" filter norm, "bn-scale" (network slimming), "thinet" (needs a few
    `calibration` input batches; the consumers of pruned channels are then rescaled by least
    squares), or any torch-pruning Importance. `ignore`: layer-name globs whose outputs are kept
    whole (the classifier always is). `layer_ratios`: {layer glob: ratio}, later patterns winning,
    for scope "layer"; each ratio applies to the group of channels coupled with the matched layers.
    With scope "layer" no group loses more than its ratio (rounded down; `round_to` rounds the kept
    count up); with scope "global" `ratio` of all prunable channels go.

    `example_inputs` (default: one random input of `model_input_size(model)`) is traced for the
    dependency graph and used for the check: in eval mode the pruned model's outputs must equal
    the original's with the removed channels zeroed, within `tolerance` x (largest |output| + 1e-6).
    Raises EffdlError, with the model left as it was, for bad options, a global ratio that would
    empty a layer, or a pruning that fails that check (after one retry that keeps whole the layers
    whose channels cross a view/reshape or slice, which a hard-coded shape may not follow).
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
    if ratio == 0 and not any(chosen.values()):
        return PrunedChannels(ratio=ratio)
    before = module_widths(model)
    was_training = model.training
    keep_whole: set[nn.Module] = set()
    while True:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs, customized_pruners=_shuffle_barriers(model),
                                                   verbose=False)
        model.train(was_training)  # tracing leaves the model in eval mode
        if chosen:
            _check_group_ratios(dg, chosen, names, ignored)
        plan = _plan(dg, importance, ratio, scope=scope, round_to=round_to, ignored=ignored, chosen=chosen,
                     names=names, keep_whole=keep_whole)
        if not plan.steps:
            break
        expected = _outputs(model, example_inputs, plan.removed_inputs)
        snapshot = _snapshot(model)
        # Each planned group's indices are right for the unchanged model; a group is rebuilt from its
        # root's indices when applied, so concatenation offsets follow earlier groups (DenseNet).
        for root, handler, idxs in plan.steps:
            dg.get_pruning_group(root, handler, idxs).prune()
        problem = _mismatch(model, example_inputs, expected, tolerance)
        if problem is None:
            break
        _restore(snapshot)
        if plan.through_reshape and not keep_whole:
            keep_whole = plan.through_reshape  # try once more without the channels crossing a reshape
            continue
        raise EffdlError(f"structured pruning was undone: the pruned model {problem}; "
                         "keep the layers involved whole (ignore / --exclude) or lower the ratio")
    if plan.steps and isinstance(importance, ThiNetImportance):
        importance.reconstruct(model, {names[layer]: idxs for layer, idxs in plan.removed_inputs.items()})
    after = module_widths(model)
    changed = {name: spec for name, spec in after.items() if spec != before.get(name)}
    if changed:
        record_transform(model, TRANSFORM, {"modules": changed})
    if plan.skipped:
        _warn_skipped(plan.skipped)
    widths = {name: (before[name]["tensors"]["weight"][0], after[name]["tensors"]["weight"][0]) for name in layers}
    return PrunedChannels({name: (old, new) for name, (old, new) in widths.items() if old != new},
                          plan.skipped, ratio)


def prune_channels_to_macs(
    model: nn.Module, keep_macs: float, *, input_size: tuple[int, ...] | None = None, steps: int = 10,
    example_inputs: torch.Tensor | None = None, **kwargs
) -> PrunedChannels:
    """Prune in place until MACs are at most `keep_macs` of the original; returns the final
    `prune_channels` result, whose `.ratio` is the channel ratio found. Other keyword arguments
    are `prune_channels`'s.

    MACs are counted on one input of `input_size` ((C, H, W) or (1, C, H, W)); default: the shape of
    one of `example_inputs` (the batch traced for the dependency graph) when given, else
    `model_input_size(model)`. The ratio is found by bisection on copies of the model, with the same
    criterion (ThiNet calibration runs once, on the original).
    """
    keep_macs = float(keep_macs)
    if not 0.0 < keep_macs < 1.0:
        raise EffdlError(f"the MAC fraction to keep must be in (0, 1), got {keep_macs}")
    if input_size is None and example_inputs is not None:
        input_size = (1, *example_inputs.shape[1:])
    shape = example_input_shape(model, input_size)
    if example_inputs is None:
        example_inputs = default_inputs(model, shape)
    criterion = kwargs.pop("criterion", "l1")
    if isinstance(criterion, str):
        criterion = make_importance(criterion, scope=kwargs.get("scope", "layer"), model=model,
                                    calibration=kwargs.pop("calibration", None))
    prune_channels(copy.deepcopy(model), 0.0, criterion=criterion, example_inputs=example_inputs, **kwargs)  # checks options
    base = profile(model, shape).macs
    low, fitting, failing = 0.0, None, 1.0  # fitting: smallest ratio known to meet the budget
    deepest: tuple[float, PrunedChannels] | None = None  # MACs kept and result at the largest ratio `low`
    for _ in range(steps):
        ratio = (low + (fitting if fitting is not None else failing)) / 2
        trial = copy.deepcopy(model)
        try:
            with warnings.catch_warnings():  # the final pruning reports the layers left whole
                warnings.simplefilter("ignore")
                trial_result = prune_channels(trial, ratio, criterion=criterion, example_inputs=example_inputs,
                                              **kwargs)
        except EffdlError:  # would empty a layer: too much
            failing = ratio
            continue
        kept = profile(trial, shape).macs / base
        if kept <= keep_macs:
            fitting = ratio
        else:
            low, deepest = ratio, (kept, trial_result)
    if fitting is None:
        # Say how far it got and what held it: layers whose channels cannot be removed (coupled, kept
        # whole by the options) bound the MACs any ratio can reach.
        detail = ""
        if deepest is not None:
            kept, trial_result = deepest
            detail = f": the deepest pruning kept {kept:.0%} of them (channel ratio {trial_result.ratio:.2f})"
            if trial_result.skipped:
                name, why = next(iter(trial_result.skipped.items()))
                detail += (f", with {len(trial_result.skipped)} layer(s) left whole, e.g. {name}: {why}; "
                           "prune_channels at a fixed ratio warns with every one")
        raise EffdlError(f"could not reach {100 * keep_macs:.3g}% of the MACs by channel pruning{detail}")
    result = prune_channels(model, fitting, criterion=criterion, example_inputs=example_inputs, **kwargs)
    reached = profile(model, shape).macs / base
    if reached < 0.8 * keep_macs:
        # Rounding channel counts (round_to) can make the budget jump: on 16-channel layers,
        # multiples of 8 allow only 8 or 16, so the next step down may halve a whole stage.
        warnings.warn(f"channel pruning kept {reached:.2f}x of the MACs for a {keep_macs:.2f}x target: the channel "
                      f"counts allowed{' by round_to=' + str(kwargs['round_to']) if kwargs.get('round_to') else ''} "
                      "are too coarse to land closer; a smaller round_to, or layer_ratios, gets nearer", stacklevel=2)
    return result
