"""Pruning configs as versioned data, and the one pruning verb `prune_(model, config)`.

    masks = prune_(model, MagnitudePruneConfig(sparsity=0.8))                 # unstructured
    pruned = prune_(model, ChannelPruneConfig(ratio=0.3, criterion="thinet"), calibration=batches)
    removed = prune_(model, BlockPruneConfig(blocks=3), calibration=batches)      # depth

`prune_` dispatches on the config's type to the handler registered for it (effdl.core.configs), so
a new method is a config class and a handler; a new channel criterion is one `register_criterion`
factory (criteria.py), usable by name in `ChannelPruneConfig`. `config_to_dict(config)` is what a
checkpoint or run summary stores. Schedules that train between pruning steps (AGP, lottery
tickets, iterative pruning) take a training function and live in schedules.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from effdl.compress.prune.blocks import PrunedBlocks, check_block_amount, prune_blocks
from effdl.compress.prune.criteria import CRITERIA
from effdl.compress.prune.selection import check_fraction
from effdl.compress.prune.structured import PrunedChannels, prune_channels, prune_channels_to_macs
from effdl.compress.prune.unstructured import Masks, prune_magnitude
from effdl.core.configs import dispatch, register_handler, technique_config
from effdl.errors import EffdlError, unknown_name_error
from effdl.measure.bits import has_quantized_layers

SCOPES = ("global", "layer")


def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise EffdlError(f"unknown scope '{scope}'; use global or layer")


@technique_config("prune.magnitude", version=1)
@dataclass(frozen=True)
class MagnitudePruneConfig:
    """Unstructured magnitude pruning (Han et al. 2015): zero the smallest |w| of Conv/Linear weights.

    sparsity: fraction of weights to remove in [0, 1), or {layer name or glob: fraction} per layer.
    scope: "global" (one threshold over all selected layers) or "layer" (each layer alone).
    include / exclude: layer-name globs choosing the layers (empty include: every Conv/Linear).
    """

    sparsity: float | dict[str, float] = 0.5
    scope: str = "global"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        targets = self.sparsity.values() if isinstance(self.sparsity, dict) else [self.sparsity]
        for target in targets:
            check_fraction(target)
        _check_scope(self.scope)


@technique_config("prune.channels", version=1)
@dataclass(frozen=True)
class ChannelPruneConfig:
    """Structured pruning: remove whole channels (and what couples to them), so MACs drop.

    ratio: fraction of channels to remove in [0, 1); or target_macs: the fraction of MACs to keep
    in (0, 1), the ratio then found by bisection (exactly one of the two).
    criterion: a registered criterion (criteria.CRITERIA): "l1" / "l2" filter norm (Li et al.
    2017), "bn-scale" (network slimming, Liu et al. 2017), "thinet" (Luo et al. 2017; `prune_`
    needs `calibration` batches).
    scope, round_to, exclude (layer globs whose outputs stay whole), layer_ratios ({glob: ratio}):
    as `prune_channels` takes them.
    """

    ratio: float | None = 0.5
    target_macs: float | None = None
    criterion: str = "l1"
    scope: str = "layer"
    round_to: int | None = None
    exclude: tuple[str, ...] = ()
    layer_ratios: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if (self.ratio is None) == (self.target_macs is None):
            raise EffdlError("a channel pruning config takes exactly one of ratio and target_macs")
        if self.ratio is not None:
            check_fraction(self.ratio, "channel ratio")
        if self.target_macs is not None and not 0.0 < self.target_macs < 1.0:
            raise EffdlError(f"the MAC fraction to keep must be in (0, 1), got {self.target_macs}")
        if self.criterion not in CRITERIA:
            raise unknown_name_error("pruning criterion", self.criterion, CRITERIA)
        _check_scope(self.scope)
        for pattern, ratio in self.layer_ratios.items():
            check_fraction(ratio, f"channel ratio of '{pattern}'")


def prune_(
    model: nn.Module,
    config: Any,
    *,
    example_inputs: torch.Tensor | None = None,
    calibration: Iterable[torch.Tensor] | None = None,
) -> Any:
    """Prune `model` in place as `config` says; returns what the method produced (`Masks` to keep
    during fine-tuning for unstructured methods, `PrunedChannels` for structured ones).

    The one pruning verb: it dispatches on the config's type. example_inputs: one input batch for
    structured methods (default: a random batch of `model_input_size(model)`). calibration: input
    batches, for criteria that need data (thinet, block). Raises EffdlError if `config` is not a
    prune config or `model` is quantized, and whatever the method raises for bad options or models.
    """
    if has_quantized_layers(model):  # its quantizers are tied to the layers and inputs it has now
        raise EffdlError("cannot prune a quantized model: prune the float model, then quantize it")
    return dispatch("prune", config, model, example_inputs=example_inputs, calibration=calibration)


@technique_config("prune.blocks", version=1)
@dataclass(frozen=True)
class BlockPruneConfig:
    """Depth pruning: remove whole residual blocks with an identity shortcut (effdl.compress.prune.blocks),
    so their operators go too: what lowers batch-1 latency on CPUs when thinner layers do not.

    blocks: how many to remove; or target_macs: remove until MACs are at most this fraction (one of the
    two). Blocks go in order of output distortion on `prune_`'s `calibration` batches (pass real
    images). include / exclude: names or globs among the removable blocks.
    """

    blocks: int | None = None
    target_macs: float | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        for key in ("include", "exclude"):  # one pattern may be given as a string
            value = getattr(self, key)
            object.__setattr__(self, key, (value,) if isinstance(value, str) else tuple(value))
        blocks, _ = check_block_amount(self.blocks, self.target_macs)
        object.__setattr__(self, "blocks", blocks)  # numpy integers as int


@register_handler(MagnitudePruneConfig)
def _prune_magnitude(config: MagnitudePruneConfig, model: nn.Module, **_: Any) -> Masks:
    return prune_magnitude(model, config.sparsity, scope=config.scope, include=config.include or None,
                           exclude=config.exclude or None)


@register_handler(ChannelPruneConfig)
def _prune_channels(
    config: ChannelPruneConfig, model: nn.Module, *, example_inputs: torch.Tensor | None = None,
    calibration: Iterable[torch.Tensor] | None = None,
) -> PrunedChannels:
    options = {"criterion": config.criterion, "scope": config.scope, "round_to": config.round_to,
               "ignore": config.exclude, "layer_ratios": config.layer_ratios, "calibration": calibration}
    if config.target_macs is not None:  # MACs counted on one input of the traced batch's size
        return prune_channels_to_macs(model, config.target_macs, example_inputs=example_inputs, **options)
    return prune_channels(model, config.ratio, example_inputs=example_inputs, **options)


@register_handler(BlockPruneConfig)
def _prune_blocks(
    config: BlockPruneConfig, model: nn.Module, *, example_inputs: torch.Tensor | None = None,
    calibration: Iterable[torch.Tensor] | None = None,
) -> PrunedBlocks:
    return prune_blocks(model, blocks=config.blocks, target_macs=config.target_macs, include=config.include,
                        exclude=config.exclude, calibration=calibration, example_inputs=example_inputs)
