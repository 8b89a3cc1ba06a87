"""Factorization configs as versioned data, and the one verb `factorize_(model, config)`.

    report = factorize_(model, Tucker2Config(ratio=0.5))                         # each layer to 0.5x MACs
    report = factorize_(model, CPConfig(target_macs=0.5), accuracy=top1_on_500)  # whole model to 0.5x
    report = factorize_(model, DepthwiseConfig(), calibration=batches)           # fitted on activations
    report = factorize_(model, SVDConfig(energy=0.9), selection=["fc"])

Rank rules (exactly one per config; depthwise and grouped have none):
- rank: the same rank for every layer (Tucker: both channel ranks); 1 <= rank <= what each layer
  allows, else EffdlError naming the layer.
- energy in (0, 1]: per layer, the smallest rank keeping that fraction of the squared singular
  values (svd, spatial_svd; Tucker per channel mode); layers it would not make cheaper are skipped.
- ratio in (0, 1]: per layer, the largest rank whose chain costs at most that fraction of the
  layer's MACs.
- target_macs in (0, 1): the whole model's MACs to keep. Every selected layer is scanned at MAC
  ratios 0.1..0.9 (one layer factorized at a time, scored by `accuracy(model)` when given, else by
  the fidelity of the model's outputs on `calibration` or a seeded random batch); then, as AIMET's
  greedy compression-ratio selection does, the highest score level is searched at which taking,
  per layer, the smallest ratio still scoring at least that level meets the budget.
- Tucker2Config(vbmf=True): per layer, ranks by VBMF on the channel unfoldings (decompose.vbmf_rank).

round_to=N (with energy, ratio, target_macs or vbmf): every chosen rank is a multiple of N or the
layer's full rank (AIMET's rank "multiplicity"): ratio and target_macs choose among those ranks
(a layer none of them fits is left whole and listed), energy and vbmf round their rank up. Batch-1 CPU latency follows it more
than the MACs: ONNX Runtime's kernels work on blocks of 8-16 channels (methods' docstring).
Version 2 of the low-rank configs added round_to; version 1 data reads unchanged.

Layers a method cannot take (a depthwise convolution for Tucker, a 1x1 for CP) are skipped and
listed in the report's `skipped` when the selection is every layer or a glob; a layer named exactly,
or a glob none of whose layers can be taken, is an EffdlError, raised before any layer changes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from effdl.compress.factorize import methods as m
from effdl.compress.factorize.decompose import patch_gram
from effdl.compress.factorize.layers import TRANSFORM, Factorized, make_factorized, spec_of
from effdl.core.configs import dispatch, register_handler, technique_config
from effdl.core.edits import record_transform
from effdl.core.modules import eval_mode, input_shapes, replace_submodule
from effdl.core.selection import LayerSelection, match_patterns
from effdl.errors import EffdlError
from effdl.measure.sensitivity import SensitivityScan

SCAN_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _check_rank_rule(config: Any, *, energy_allowed: bool, extra: int = 0) -> None:
    rules = [name for name in ("rank", "energy", "ratio", "target_macs") if getattr(config, name) is not None]
    if len(rules) + extra != 1:
        names = "rank, energy, ratio, target_macs" + (" or vbmf" if hasattr(config, "vbmf") else "")
        raise EffdlError(f"{type(config).config_name} takes exactly one rank rule of {names}, got "
                         f"{', '.join(rules + (['vbmf'] if extra else [])) or 'none'}")
    if config.rank is not None and (isinstance(config.rank, bool) or not isinstance(config.rank, int) or config.rank < 1):
        raise EffdlError(f"rank must be an integer >= 1, got {config.rank!r}")
    if config.energy is not None:
        if not energy_allowed:
            raise EffdlError(f"{type(config).config_name} has no singular values to keep a fraction of: "
                             "use rank, ratio or target_macs")
        if not 0.0 < config.energy <= 1.0:
            raise EffdlError(f"energy must be in (0, 1], got {config.energy}")
    if config.ratio is not None and not 0.0 < config.ratio <= 1.0:
        raise EffdlError(f"the per-layer MAC ratio must be in (0, 1], got {config.ratio}")
    if config.target_macs is not None and not 0.0 < config.target_macs < 1.0:
        raise EffdlError(f"the MAC fraction to keep must be in (0, 1), got {config.target_macs}")
    if config.round_to is not None:
        if isinstance(config.round_to, bool) or not isinstance(config.round_to, int) or config.round_to < 1:
            raise EffdlError(f"round_to must be an integer >= 1 (a rank multiple), got {config.round_to!r}")
        if config.rank is not None:
            raise EffdlError("round_to rounds the ranks a rule chooses; with an explicit rank there is nothing to "
                             "round: give the rank you want, or use energy, ratio or target_macs")


@dataclass(frozen=True)
class _LowRank:
    rank: int | None = None
    energy: float | None = None
    ratio: float | None = None
    target_macs: float | None = None
    round_to: int | None = None

    def __post_init__(self) -> None:
        _check_rank_rule(self, energy_allowed=True)

    @staticmethod
    def upgrade(fields: dict[str, Any], version: int) -> dict[str, Any]:
        """Version 1 had no round_to: its fields read as they are."""
        return fields


@technique_config("factorize.svd", version=2)
@dataclass(frozen=True)
class SVDConfig(_LowRank):
    """Truncated SVD of Linear layers (and 1x1 convolutions): one layer becomes two thinner ones."""


@technique_config("factorize.spatial_svd", version=2)
@dataclass(frozen=True)
class SpatialSVDConfig(_LowRank):
    """Spatial SVD of kxk convolutions: kx1 to `rank` channels, then 1xk (Jaderberg et al. 2014)."""


@technique_config("factorize.tucker2", version=2)
@dataclass(frozen=True)
class Tucker2Config(_LowRank):
    """Tucker-2 of kxk convolutions: 1x1, a small kxk core, 1x1 (Kim et al. 2016); `vbmf` chooses
    both channel ranks of each layer by VBMF instead of a rank rule."""

    vbmf: bool = False

    def __post_init__(self) -> None:
        _check_rank_rule(self, energy_allowed=True, extra=int(bool(self.vbmf)))


@technique_config("factorize.cp", version=2)
@dataclass(frozen=True)
class CPConfig(_LowRank):
    """CP of kxk convolutions: 1x1, kx1 depthwise, 1xk depthwise, 1x1 (Lebedev et al. 2015); ALS
    seeded by `seed` when a rank exceeds a mode (random start)."""

    seed: int = 0

    def __post_init__(self) -> None:
        _check_rank_rule(self, energy_allowed=False)


@technique_config("factorize.depthwise", version=1)
@dataclass(frozen=True)
class DepthwiseConfig:
    """Standard kxk convolution -> depthwise kxk + pointwise 1x1, fitted by least squares on the
    layer's input activations (`calibration` batches; weights alone without them)."""


@technique_config("factorize.grouped", version=1)
@dataclass(frozen=True)
class GroupedConfig:
    """Standard kxk convolution -> grouped kxk (`groups` groups, as many channels as outputs) + 1x1
    mixing, fitted by least squares on the layer's input activations."""

    groups: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.groups, bool) or not isinstance(self.groups, int) or self.groups < 2:
            raise EffdlError(f"groups must be an integer >= 2 (1 is the layer itself), got {self.groups!r}")


METHOD_CONFIGS = {"svd": SVDConfig, "spatial-svd": SpatialSVDConfig, "tucker": Tucker2Config, "cp": CPConfig,
                  "depthwise": DepthwiseConfig, "grouped": GroupedConfig}


@dataclass
class LayerFactorization:
    """What happened to one layer: its rank ([r_out, r_in] for Tucker, None for depthwise/grouped),
    its MACs (one input, batch 1) and parameters before and after, and how its new output differs
    from the old one on the data it was fitted to (relative weight error for data-free methods)."""

    method: str
    rank: int | list[int] | None
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    relative_error: float


@dataclass
class FactorizeReport:
    """The result of `factorize_`: per factorized layer its `LayerFactorization`, per skipped layer
    why, and the sensitivity scan when a MAC target chose the ranks."""

    method: str
    layers: dict[str, LayerFactorization] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    scan: SensitivityScan | None = None

    @property
    def ranks(self) -> dict[str, int | list[int] | None]:
        return {name: layer.rank for name, layer in self.layers.items()}

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "layers": {n: asdict(layer) for n, layer in self.layers.items()},
                "skipped": dict(self.skipped), "sensitivity": self.scan.to_json() if self.scan else None}


def factorize_(
    model: nn.Module, config: Any, *, selection: Any = None, calibration: Iterable[torch.Tensor] | None = None,
    accuracy: Callable[[nn.Module], float] | None = None,
) -> FactorizeReport:
    """Factorize the selected layers of `model` in place as `config` says; returns the report.

    The one factorization verb: it dispatches on the config's type. selection: which layers (a
    LayerSelection, patterns, or a {include, exclude} mapping; None: every layer the method can
    take). calibration: input batches (N, C, H, W) for the least-squares fits (depthwise, grouped)
    and the MAC-target scan's fidelity score. accuracy(model) -> top-1 in [0, 1]: the scan's score
    when given. Raises EffdlError (before any change) for a bad config, a pattern matching nothing,
    a named layer the method cannot take, or a rank outside a layer's range.
    """
    return dispatch("factorize", config, model, selection=selection, calibration=calibration, accuracy=accuracy)


def method_for(config: Any) -> m.Method:
    """The `Method` implementing a factorize config (its rank rounding included)."""
    low_rank: m.Method | None = None
    if isinstance(config, SVDConfig):
        low_rank = m.SVD()
    elif isinstance(config, SpatialSVDConfig):
        low_rank = m.SpatialSVD()
    elif isinstance(config, Tucker2Config):
        low_rank = m.Tucker2()
    elif isinstance(config, CPConfig):
        low_rank = m.CP(config.seed)
    if low_rank is not None:
        low_rank.round_to = config.round_to
        return low_rank
    if isinstance(config, DepthwiseConfig):
        return m.Grouped(None)
    if isinstance(config, GroupedConfig):
        return m.Grouped(config.groups)
    raise EffdlError(f"{type(config).__name__} is not a factorize config")


def _has_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def select_layers(model: nn.Module, method: m.Method, selection: Any) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """(layers to factorize, {skipped layer: why}); EffdlError for a pattern matching nothing, a
    layer named exactly that the method cannot take, or a glob none of whose layers it can."""
    chosen = LayerSelection.of(selection, types=(nn.Conv2d, nn.Linear), what="Conv2d/Linear layer")
    inside = {f"{name}.{child}" for name, mod in model.named_modules() if isinstance(mod, Factorized)
              for child, _ in mod.named_children()}
    layers = chosen.select(model)
    reasons = {name: ("already a factor of a factorized layer" if name in inside else method.why_not(layer))
               for name, layer in layers.items()}
    for pattern in chosen.include:
        hits = match_patterns(layers, [pattern], strict=False)
        if not hits:
            continue
        if not _has_glob(pattern) and reasons.get(pattern):
            raise EffdlError(f"{method.name} cannot take layer '{pattern}': it is {reasons[pattern]}")
        if all(reasons[h] for h in hits):
            raise EffdlError(f"layer pattern '{pattern}' matches no layer {method.name} can take "
                             f"(e.g. '{sorted(hits)[0]}': {reasons[sorted(hits)[0]]})")
    take = {name: layer for name, layer in layers.items() if not reasons[name]}
    skipped = {name: why for name, why in reasons.items() if why}
    if not take:
        raise EffdlError(f"no selected layer can be factorized by {method.name}"
                         + (f" (e.g. '{next(iter(skipped))}': {next(iter(skipped.values()))})" if skipped else ""))
    return take, skipped


def _layer_inputs(model: nn.Module, name: str, batches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The inputs layer `name` receives when `model` runs on `batches` (eval mode)."""
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    try:
        with eval_mode(model), torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        handle.remove()
    return seen


def _rank_for_ratio(method: m.Method, layer: nn.Module, shape: tuple[int, ...], ratio: float) -> Any:
    """The costliest candidate rank whose chain has at most `ratio` of the layer's MACs (else the cheapest)."""
    budget = ratio * m.chain_macs([spec_of(layer)], shape)
    ranks = method.candidate_ranks(layer)
    fitting = [r for r in ranks if m.chain_macs(method.specs(layer, r), shape) <= budget]
    if not fitting:
        return ranks[0]
    return max(fitting, key=lambda r: (m.chain_macs(method.specs(layer, r), shape), r))


def _nothing_cheaper(method: m.Method, skipped: dict[str, str], by_selection: dict[str, str]) -> EffdlError:
    """The error when every selected layer was left whole by its rank rule, naming one of those
    (`skipped` less the layers the selection itself left, `by_selection`)."""
    first = next(((n, why) for n, why in skipped.items() if n not in by_selection), None)
    return EffdlError(f"no selected layer would get cheaper by {method.name} with these options"
                      + (f" (e.g. '{first[0]}': {first[1]})" if first else ""))


def _cheapest_macs(method: m.Method, layer: nn.Module, shape: tuple[int, ...]) -> int:
    return m.chain_macs(method.specs(layer, method.candidate_ranks(layer)[0]), shape)


def _build(method: m.Method, layer: nn.Module, rank: Any, gram: torch.Tensor | None = None) -> Factorized:
    weight = layer.weight
    factors = method.factors(layer, rank, gram)
    return make_factorized(method.name, method.specs(layer, rank), factors,
                           layer.bias.detach() if layer.bias is not None else None, weight)


def _relative_error(new: nn.Module, old: nn.Module, inputs: Sequence[torch.Tensor]) -> float:
    with torch.no_grad():
        num = den = 0.0
        for x in inputs:
            ref = old(x)
            num += float((new(x) - ref).double().pow(2).sum())
            den += float(ref.double().pow(2).sum())
    return (num / den) ** 0.5 if den > 0 else 0.0


def _fidelity_score(model: nn.Module, batches: Sequence[torch.Tensor]) -> Callable[[nn.Module], float]:
    """1 - the relative error of `model`'s outputs from its present ones on `batches` (a score in
    (-inf, 1] that falls as factorizing a layer disturbs the network more)."""
    with eval_mode(model), torch.no_grad():
        references = [model(x) for x in batches]

    def score(current: nn.Module) -> float:
        with eval_mode(current), torch.no_grad():
            num = sum(float((current(x) - r).double().pow(2).sum()) for x, r in zip(batches, references))
        den = sum(float(r.double().pow(2).sum()) for r in references)
        return 1.0 - (num / den) ** 0.5 if den > 0 else 1.0

    return score


def _greedy_ranks(
    model: nn.Module, method: m.Method, layers: dict[str, nn.Module], shapes: dict[str, tuple[int, ...]],
    target: float, score: Callable[[nn.Module], float],
) -> tuple[dict[str, Any], SensitivityScan]:
    """Per-layer ranks meeting `target` (fraction of the model's MACs) by AIMET's greedy rule."""
    baseline = float(score(model))
    accuracies: dict[str, dict[float, float]] = {}
    options: dict[str, dict[float, tuple[Any, int]]] = {}
    for name, layer in layers.items():
        shape = shapes[name]
        accuracies[name], options[name] = {}, {}
        for ratio in SCAN_RATIOS:
            rank = _rank_for_ratio(method, layer, shape, ratio)
            macs = m.chain_macs(method.specs(layer, rank), shape)
            options[name][ratio] = (rank, macs)
            replace_submodule(model, name, _build(method, layer, rank))
            try:
                accuracies[name][ratio] = float(score(model))
            finally:
                replace_submodule(model, name, layer)
    scan = SensitivityScan.from_accuracies(baseline, "MAC ratio", "factorization", accuracies)
    return options, scan


def _allocate(
    options: dict[str, dict[float, tuple[Any, int]]], scan: SensitivityScan, layer_macs: dict[str, int],
    model_macs: int, target: float,
) -> dict[str, Any]:
    """The ranks of the highest score level whose per-layer smallest admissible ratios meet the budget,
    then MACs the budget still allows given back to the layers that lose most (`_give_back`)."""
    budget = target * model_macs
    fixed = model_macs - sum(layer_macs.values())
    accuracy = {p.layer: {} for p in scan.points}
    for p in scan.points:
        accuracy[p.layer][p.setting] = p.accuracy
    levels = sorted({p.accuracy for p in scan.points}, reverse=True)
    for level in levels:
        chosen: dict[str, float | None] = {}  # layer -> ratio (None: left whole)
        macs = fixed
        for name, by_ratio in options.items():
            ok = [r for r in sorted(by_ratio) if accuracy[name][r] >= level]
            chosen[name] = ok[0] if ok else None
            macs += by_ratio[ok[0]][1] if ok else layer_macs[name]
        if macs <= budget:
            chosen = _give_back(chosen, options, accuracy, layer_macs, budget - macs)
            return {name: options[name][ratio][0] for name, ratio in chosen.items() if ratio is not None}
    smallest = fixed + sum(min(c for _, c in by_ratio.values()) for by_ratio in options.values())
    raise EffdlError(f"factorizing the selected layers cannot reach {target:.0%} of the MACs: at most down to "
                     f"{smallest / model_macs:.0%} (the other layers cost {fixed / model_macs:.0%})")


def _give_back(
    chosen: dict[str, float | None], options: dict[str, dict[float, tuple[Any, int]]],
    accuracy: dict[str, dict[float, float]], layer_macs: dict[str, int], spare: float,
) -> dict[str, float | None]:
    """Raise layers to their next larger ratio (or whole) while `spare` MACs allow, the layer whose
    scanned score is lowest at its ratio first. A level's cheapest admissible ratios can land far
    under the budget (every layer of a model whose scores are flat takes its smallest ratio: a 0.6
    target reached 0.36x), and the budget is what the user asked to keep."""
    chosen = dict(chosen)

    def cost(name: str, ratio: float | None) -> int:
        return layer_macs[name] if ratio is None else options[name][ratio][1]

    while True:
        steps = []
        for name, ratio in chosen.items():
            if ratio is None:
                continue
            larger = [r for r in sorted(options[name]) if r > ratio]
            step = larger[0] if larger else None  # beyond the largest scanned ratio: the layer whole
            extra = cost(name, step) - cost(name, ratio)
            if extra <= spare:
                steps.append((accuracy[name][ratio], name, step, extra))
        if not steps:
            return chosen
        _, name, step, extra = min(steps, key=lambda s: (s[0], s[1]))
        chosen[name] = step
        spare -= extra


def _default_batches(model: nn.Module, calibration: Iterable[torch.Tensor] | None) -> list[torch.Tensor]:
    if calibration is not None:
        batches = [x for x in calibration]
        if not batches:
            raise EffdlError("calibration holds no batch")
        return batches
    from effdl.models.registry import model_input_size

    first = next(model.parameters())
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(8, *model_input_size(model), generator=gen).to(device=first.device, dtype=first.dtype)]


def _factorize(
    config: Any, model: nn.Module, *, selection: Any = None, calibration: Iterable[torch.Tensor] | None = None,
    accuracy: Callable[[nn.Module], float] | None = None,
) -> FactorizeReport:
    method = method_for(config)
    layers, skipped = select_layers(model, method, selection)
    given_calibration = calibration is not None
    batches = _default_batches(model, calibration)
    shapes = input_shapes(model, list(layers), batches[0])
    report = FactorizeReport(method=method.name, skipped=dict(skipped))  # a copy: `skipped` stays the selection's
    layer_macs = {name: m.chain_macs([spec_of(layer)], shapes[name]) for name, layer in layers.items()}
    multiple = f" a multiple of {method.round_to}" if method.round_to else ""  # for the skip reasons

    # choose every rank first: a bad rank is refused before any layer changes
    ranks: dict[str, Any] = {}
    if isinstance(config, (DepthwiseConfig, GroupedConfig)):
        ranks = dict.fromkeys(layers)
    elif config.rank is not None:
        ranks = {name: method.check_rank(layer, config.rank, name) for name, layer in layers.items()}
    elif config.energy is not None or config.ratio is not None or getattr(config, "vbmf", False):
        for name, layer in layers.items():
            if getattr(config, "vbmf", False):
                rank = method.rounded(layer, method.vbmf_rank(layer))
            elif config.energy is not None:
                rank = method.rounded(layer, method.energy_rank(layer, config.energy))
            else:
                rank = _rank_for_ratio(method, layer, shapes[name], config.ratio)
            macs = m.chain_macs(method.specs(layer, rank), shapes[name])
            if macs >= layer_macs[name]:
                report.skipped[name] = (f"at rank {rank} its {method.name} chain would cost as much as the layer "
                                        "or more")
                continue
            if config.ratio is not None and macs > config.ratio * layer_macs[name]:
                # the cheapest allowed rank is over the ratio: "at most" is the rule, not "about"
                report.skipped[name] = (f"its cheapest rank{multiple} ({rank}) keeps {macs / layer_macs[name]:.2f}x of its MACs, above the "
                                        f"{config.ratio} ratio")
                continue
            ranks[name] = rank
    else:
        for name in [n for n, layer in layers.items() if _cheapest_macs(method, layer, shapes[n]) >= layer_macs[n]]:
            report.skipped[name] = f"no rank{multiple} makes its {method.name} chain cheaper than the layer"
            del layers[name], layer_macs[name]  # its MACs stay in the model's fixed part of the budget
        if not layers:
            raise _nothing_cheaper(method, report.skipped, skipped)
        score = accuracy or _fidelity_score(model, batches)
        options, report.scan = _greedy_ranks(model, method, layers, shapes, config.target_macs, score)
        model_macs = _model_macs(model, batches[0])
        ranks = _allocate(options, report.scan, layer_macs, model_macs, config.target_macs)
        planned = model_macs - sum(layer_macs[n] - m.chain_macs(method.specs(layers[n], rank), shapes[n])
                                   for n, rank in ranks.items())
        if planned < 0.8 * config.target_macs * model_macs:
            warnings.warn(f"{method.name} keeps {planned / model_macs:.2f}x of the MACs for a "
                          f"{config.target_macs:.2f}x target: the scanned ranks are too coarse to land closer; "
                          "give ranks or a ratio per layer to get nearer", stacklevel=3)
        for name in layers:
            if name not in ranks:
                report.skipped[name] = "left whole by the MAC budget (too sensitive for its savings)"
    if not ranks:
        raise _nothing_cheaper(method, report.skipped, skipped)
    if report.skipped:
        warnings.warn(f"{method.name} leaves {len(report.skipped)} layer(s) whole: "
                      + "; ".join(f"{n} ({why})" for n, why in list(report.skipped.items())[:8])
                      + (" ..." if len(report.skipped) > 8 else ""), stacklevel=3)

    fitted = isinstance(config, (DepthwiseConfig, GroupedConfig))
    record: dict[str, Any] = {}
    for name, rank in ranks.items():
        layer = layers[name]
        inputs = _layer_inputs(model, name, batches) if given_calibration else []
        gram = None
        if fitted and given_calibration:
            kernel, stride, padding, dilation = m.conv_geometry(layer)
            gram = sum(patch_gram(x, kernel, stride, padding, dilation) for x in inputs)
        new = _build(method, layer, rank, gram)
        new.train(layer.training)
        error = _relative_error(new, layer, inputs or [_random_input(layer, shapes[name])])
        replace_submodule(model, name, new)
        specs = [spec_of(mod) for mod in new]
        record[name] = {"method": method.name, "modules": specs}
        report.layers[name] = LayerFactorization(
            method=method.name, rank=list(rank) if isinstance(rank, tuple) else rank,
            macs_before=layer_macs[name], macs_after=m.chain_macs(specs, shapes[name]),
            params_before=m.chain_params([spec_of(layer)]), params_after=m.chain_params(specs),
            relative_error=error)
    record_transform(model, TRANSFORM, {"layers": record})
    return report


def _model_macs(model: nn.Module, example: torch.Tensor) -> int:
    from effdl.measure.counting import profile

    return profile(model, (1, *example.shape[1:])).macs


def _random_input(layer: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """A seeded N(0, 1) input of the layer's shape (batch 4): the data-free error measure."""
    x = torch.randn((4, *shape[1:]), generator=torch.Generator().manual_seed(0))
    return x.to(device=layer.weight.device, dtype=layer.weight.dtype)


for _config in (SVDConfig, SpatialSVDConfig, Tucker2Config, CPConfig, DepthwiseConfig, GroupedConfig):
    register_handler(_config)(_factorize)


def factorize_sensitivity(
    model: nn.Module, config: Any, *, selection: Any = None, calibration: Iterable[torch.Tensor] | None = None,
    accuracy: Callable[[nn.Module], float] | None = None,
) -> SensitivityScan:
    """The per-layer sensitivity scan a MAC target uses, alone: each selected layer factorized by
    `config`'s method at MAC ratios 0.1..0.9 in turn (the others whole), scored by `accuracy` (or
    output fidelity on `calibration`). `model` is left as it was. Setting: "MAC ratio"."""
    method = method_for(config)
    layers, _ = select_layers(model, method, selection)
    batches = _default_batches(model, calibration)
    shapes = input_shapes(model, list(layers), batches[0])
    if isinstance(method, m.Grouped):
        raise EffdlError(f"{method.name} has no rank to scan")
    return _greedy_ranks(model, method, layers, shapes, 0.0, accuracy or _fidelity_score(model, batches))[1]
