"""Pruning: unstructured magnitude masks and schedules, and structured channel removal.

Importing this package registers the `prune_channels` checkpoint replay.
"""

from effdl.compress.prune.criteria import FilterNormImportance, ThiNetImportance, make_importance
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
    "AGPCallback", "FilterNormImportance", "MaskCallback", "Masks", "SensitivityScan", "SlimmingPenalty", "SparsityReport",
    "ThiNetImportance", "WeightSnapshot", "agp_sparsity", "apply_masks", "bn_scale_l1",
    "current_masks", "iterative_pruning", "iterative_sparsities", "lottery_ticket", "magnitude_masks",
    "make_importance", "make_permanent", "measure_sparsity", "prune_channels", "prune_channels_to_macs",
    "prune_magnitude", "rewind", "sensitivity_scan", "snapshot",
]
