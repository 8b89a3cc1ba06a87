"""Pruning: unstructured magnitude masks and schedules, structured channel removal, block removal.

Importing this package registers the `prune_channels` and `remove_blocks` checkpoint replays and the
pruning configs (`MagnitudePruneConfig`, `ChannelPruneConfig`, `BlockPruneConfig`), applied by the
one verb `prune_(model, config)`.
"""

from effdl.compress.prune.blocks import PrunedBlocks, block_distortion, prune_blocks, removable_blocks
from effdl.compress.prune.configs import BlockPruneConfig, ChannelPruneConfig, MagnitudePruneConfig, prune_
from effdl.compress.prune.criteria import FilterNormImportance, ThiNetImportance, make_importance, register_criterion
from effdl.compress.prune.schedules import (
    AGPCallback,
    WeightSnapshot,
    agp_sparsity,
    iterative_pruning,
    iterative_sparsities,
    lottery_ticket,
    rewind,
    snapshot,
)
from effdl.compress.prune.sensitivity import SensitivityScan, sensitivity_scan
from effdl.compress.prune.slimming import SlimmingPenalty, bn_scale_l1
from effdl.compress.prune.structured import prune_channels, prune_channels_to_macs
from effdl.compress.prune.unstructured import (
    MaskCallback,
    Masks,
    SparsityReport,
    apply_masks,
    current_masks,
    magnitude_masks,
    make_permanent,
    measure_sparsity,
    prune_magnitude,
)

__all__ = [
    "AGPCallback", "BlockPruneConfig", "ChannelPruneConfig", "FilterNormImportance", "MagnitudePruneConfig",
    "MaskCallback", "Masks", "PrunedBlocks", "SensitivityScan", "SlimmingPenalty", "SparsityReport",
    "ThiNetImportance", "WeightSnapshot", "agp_sparsity", "apply_masks", "block_distortion", "bn_scale_l1",
    "current_masks", "iterative_pruning", "iterative_sparsities", "lottery_ticket", "magnitude_masks",
    "make_importance", "make_permanent", "measure_sparsity", "prune_", "prune_blocks", "prune_channels",
    "prune_channels_to_macs", "prune_magnitude", "register_criterion", "removable_blocks", "rewind",
    "sensitivity_scan", "snapshot",
]
