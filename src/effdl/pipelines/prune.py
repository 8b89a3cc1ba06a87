"""The job behind `effdl prune`: checkpoint in, pruned (and fine-tuned) run directory out.

`prune_checkpoint` loads a checkpoint, measures it, applies one pruning method (a technique from
effdl.compress.prune), optionally fine-tunes through effdl.pipelines.finetune (the source run's
training config; masks kept applied for unstructured methods), measures again and writes the run
directory through effdl.pipelines.run_dir (best.safetensors: the final pruned weights; summary.json:
the core fields, and this module's measurements under `details`). Every number
in the summary is measured on the model itself: sparsity is the fraction of exact zeros, MACs and
parameters come from the counting engine, accuracy from the full test split. Structured methods
also record `channels_left_whole` ({layer: why}): layers whose channels could not be removed
correctly (a channel shuffle, a grouped convolution, a view/reshape coupling them in blocks).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from effdl.checkpoint import read_checkpoint, split_namespace
from effdl.compress.distill import finetune_distiller
from effdl.compress.prune.schedules import AGPCallback, iterative_pruning, lottery_ticket
from effdl.compress.prune.blocks import check_block_amount
from effdl.compress.prune.configs import BlockPruneConfig, ChannelPruneConfig, MagnitudePruneConfig, prune_
from effdl.compress.prune.selection import check_fraction
from effdl.compress.prune.sensitivity import sensitivity_scan
from effdl.compress.prune.slimming import SlimmingPenalty
from effdl.compress.prune.unstructured import MaskCallback, make_permanent, measure_sparsity
from effdl.data import BatchLoader, ImageDataset
from effdl.core.configs import config_to_dict
from effdl.device import resolve_device
from effdl.errors import EffdlError, UnreadOptionError, unknown_name_error
from effdl.measure.accuracy import Accuracy, evaluate
from effdl.pipelines.compression import (
    load_for_compression, measure_compressed, reestimate_and_evaluate, technique_finetuner, training_batches,
)
from effdl.pipelines.method_options import check_finetune_options, is_set, refuse_unread_options
from effdl.pipelines.run_dir import CompressedRun

UNSTRUCTURED = ("magnitude", "agp", "lottery")
STRUCTURED = {"l1-filter": "l1", "l2-filter": "l2", "slimming": "bn-scale", "thinet": "thinet"}
DEPTH = "block"  # whole residual blocks removed (effdl.compress.prune.blocks)
METHODS = (*UNSTRUCTURED, *STRUCTURED, DEPTH)
# The options only some methods read (prune_checkpoint below): set away from its default for another
# method, one would be ignored without a word (--round-to with magnitude, --rounds with agp or
# l1-filter, --calibration-batches with l1-filter all changed nothing). The checks before it in
# validate() refuse some of these with advice of their own.
READ_BY = {
    "sparsity": (*UNSTRUCTURED, *STRUCTURED), "target_macs": (*STRUCTURED, DEPTH), "blocks": (DEPTH,),
    "scope": (*UNSTRUCTURED, *STRUCTURED), "round_to": (*STRUCTURED,), "rounds": ("magnitude", "lottery"),
    "rewind_to": ("lottery",), "penalty": ("slimming",), "penalty_epochs": ("slimming",),
    "calibration_batches": ("thinet", DEPTH), "sensitivity_drop": ("magnitude",), "scan_images": ("magnitude",),
    "include": (*UNSTRUCTURED, DEPTH), "layer_ratios": (*STRUCTURED,),
}

UNSTRUCTURED_NOTE = (
    "unstructured sparsity shrinks storage (and the scores, which count only non-zero weights) "
    "but not dense latency: dense kernels still multiply the zeros, and the MACs above are dense MACs"
)
STRUCTURED_NOTE = "channels were physically removed: MACs, parameters and dense latency all drop"
DEPTH_NOTE = ("residual blocks were removed whole: their MACs, parameters and operators are gone, which lowers "
              "batch-1 latency where per-operator cost dominates")


@dataclass
class PruneOptions:
    """What `effdl prune` does; see `effdl prune --help` for each option."""

    method: str
    sparsity: float | None = None  # fraction of weights (unstructured) or of channels (structured)
    target_macs: float | None = None  # structured and block: keep this fraction of the MACs instead
    blocks: int | None = None  # block: how many residual blocks to remove
    scope: str | None = None  # global | layer (default: global unstructured, layer structured)
    round_to: int | None = None
    epochs: int = 0
    lr: float = 0.01
    batch_size: int | None = None  # fine-tuning batch size; None: the source run's
    rounds: int = 1
    rewind_to: str | None = None
    penalty: float = 1e-4
    penalty_epochs: int = 0
    calibration_batches: int = 4
    sensitivity_drop: float | None = None
    scan_images: int = 1000
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    layer_ratios: dict[str, float] = field(default_factory=dict)  # structured: {layer glob: channel ratio}
    train_limit: int | None = None
    test_limit: int | None = None
    device: str = "auto"
    compile: bool = False  # torch.compile the fine-tuning step
    distill: float = 0.0  # weight of distillation from the unpruned model during fine-tuning (0: off)
    distill_temperature: float = 4.0
    distill_method: str = "kd"  # effdl.compress.distill methods: kd, dkd, kd-std, fitnets, at, overhaul
    seed: int = 0

    def validate(self) -> None:
        if self.method not in METHODS:
            raise unknown_name_error("pruning method", self.method, METHODS)
        structured = self.method in STRUCTURED
        if self.target_macs is not None and not 0.0 < self.target_macs < 1.0:
            raise EffdlError(f"--target-macs is the fraction of the MACs to keep, in (0, 1); got {self.target_macs}")
        if self.method == DEPTH:
            if (self.blocks is None) == (self.target_macs is None):
                raise EffdlError("method block takes one of --blocks (how many residual blocks to remove) "
                                 "or --target-macs")
            channel_keys = {"sparsity": self.sparsity is not None, "layer_ratios": bool(self.layer_ratios),
                            "round_to": self.round_to is not None}
            if any(channel_keys.values()):
                raise UnreadOptionError("method block removes whole blocks: --sparsity, --layer-ratio and --round-to "
                                        "are for channel pruning (run a channel-pruning stage after it)",
                                        next(k for k, given in channel_keys.items() if given))
            check_block_amount(self.blocks, self.target_macs)
            if self.scope is not None or self.rounds != 1:
                raise UnreadOptionError("method block removes blocks in one step, least disruptive first: "
                                        "--scope and --rounds do not apply", "scope" if self.scope is not None else "rounds")
        elif self.blocks is not None:
            raise UnreadOptionError("--blocks applies to method block", "blocks")
        elif self.sparsity is None and not (structured and self.target_macs is not None) and self.sensitivity_drop is None:
            raise EffdlError(f"--sparsity is required for method {self.method}")
        if self.sparsity is not None:
            check_fraction(self.sparsity)
        if self.target_macs is not None and self.sparsity is not None:
            raise EffdlError("--target-macs and --sparsity both set how much to remove: give one")
        if self.calibration_batches < 1:
            raise EffdlError(f"--calibration-batches must be >= 1, got {self.calibration_batches}")
        if self.target_macs is not None and not (structured or self.method == DEPTH):
            raise EffdlError("--target-macs applies to structured methods (l1-filter, l2-filter, slimming, thinet, "
                             "block)")
        if self.scope not in (None, "global", "layer"):
            raise EffdlError(f"unknown scope '{self.scope}'; use global or layer")
        if self.epochs < 0 or self.rounds < 1 or self.penalty_epochs < 0:
            raise EffdlError("--epochs and --penalty-epochs must be >= 0 and --rounds >= 1")
        if self.method == "agp" and self.epochs < 1:
            raise EffdlError("agp prunes gradually during training: pass --epochs N (N >= 1)")
        if self.method == "lottery" and not self.rewind_to:
            raise EffdlError("lottery rewinds to early weights: pass --rewind-to an early checkpoint of the same run")
        if self.sensitivity_drop is not None and self.method != "magnitude":
            raise EffdlError("--sensitivity-drop sets per-layer targets for the magnitude method only")
        if self.layer_ratios and not structured:
            raise EffdlError("--layer-ratio applies to structured methods (l1-filter, l2-filter, slimming, thinet)")
        if structured and self.include:
            raise EffdlError("structured pruning takes --exclude (layers whose outputs are kept), not --include")
        refuse_unread_options(self, READ_BY, self.method, flags={"layer_ratios": "--layer-ratio"})
        # Read by the method, but only with another option: alone, each would change nothing.
        if self.sensitivity_drop is not None and (self.sparsity is not None or self.scope == "global"):
            raise EffdlError("--sensitivity-drop sets each layer's sparsity from the scan (layer scope): "
                             "--sparsity and --scope global do not apply")
        if is_set(self, "scan_images") and self.sensitivity_drop is None:
            raise EffdlError("--scan-images sizes the --sensitivity-drop scan: give --sensitivity-drop too")
        if is_set(self, "penalty") and not self.penalty_epochs:
            raise UnreadOptionError("--penalty is the L1 strength of the --penalty-epochs training: give "
                                    "--penalty-epochs too", "penalty")
        if self.method == "magnitude" and self.rounds > 1 and not self.epochs:
            raise UnreadOptionError("--rounds alternates pruning and fine-tuning: give --epochs too", "rounds")
        slimming = self.method == "slimming"  # its --penalty-epochs fine-tune distills too
        check_finetune_options(self, fine_tunes=bool(self.epochs or (slimming and self.penalty_epochs)),
                               epochs_hint="--epochs" + (" or --penalty-epochs" if slimming else ""))

    def fine_tunes_once(self) -> bool:
        """Whether the method fine-tunes in one phase (what an interrupted run can resume): not the
        lottery's rounds, iterative magnitude rounds, or slimming's penalty phase before its fine-tune."""
        return not (self.method == "lottery" or (self.rounds > 1 and self.epochs)
                    or (self.method == "slimming" and self.penalty_epochs))


def prune_checkpoint(
    checkpoint: str | Path, options: PruneOptions, out_dir: str | Path, data: ImageDataset | None = None,
    *, overwrite: bool = False, resume: bool = False,
) -> dict[str, Any]:
    """Prune `checkpoint` as `options` say into run directory `out_dir`; returns the summary.

    An existing run in `out_dir` is refused (EffdlError) unless `overwrite`, which deletes it first.
    `resume`: continue the interrupted fine-tune of the run in `out_dir`, started with the same
    checkpoint and options (methods that fine-tune once; EffdlError for the others).
    """
    options.validate()
    if resume and not options.fine_tunes_once():
        raise EffdlError(f"--method {options.method} fine-tunes in several phases, which cannot be resumed: "
                         "start it again with --overwrite")
    run = CompressedRun(out_dir, kind="prune", source=checkpoint, overwrite=overwrite,
                        other_sources=(options.rewind_to,) if options.rewind_to else (), device=options.device,
                        options=options, resume=resume)
    out_dir = run.path
    model, meta, data = load_for_compression(checkpoint, data, train_limit=options.train_limit,
                                             test_limit=options.test_limit, seed=options.seed, verb="prune")
    train_config = meta.get("config") or {}
    device = resolve_device(options.device)
    model = model.to(device)
    early = split_namespace(read_checkpoint(options.rewind_to)[0], "model") if options.rewind_to else None
    torch.manual_seed(options.seed)

    before = measure_compressed(model, data, device)
    # Made before any pruning: the callback keeps its own copy of the unpruned model as the teacher.
    distillation = finetune_distiller(model, options.distill, options.distill_temperature, options.distill_method,
                                      input_size=data.image_shape) if options.distill else None
    finetune = technique_finetuner(data, meta, options, callbacks=[distillation] if distillation is not None else [],
                                   run=run)
    tuning_epochs = max(options.epochs, options.penalty_epochs if options.method == "slimming" else 0)
    if tuning_epochs:
        run.write_config(finetune.config(tuning_epochs))
    scope = None if options.method == DEPTH else options.scope or ("layer" if options.method in STRUCTURED else "global")
    selection = {"include": options.include or None, "exclude": options.exclude or None}
    details: dict[str, Any] = {}
    before_finetune: Accuracy | None = None

    if options.method == "magnitude":
        target: Any = options.sparsity
        if options.sensitivity_drop is not None:
            scan_data = dataclasses.replace(data, test_images=data.train_images[: options.scan_images],
                                            test_labels=data.train_labels[: options.scan_images])
            loader = BatchLoader.for_split(scan_data, "test", batch_size=500, device=device)
            scan = sensitivity_scan(model, lambda m: evaluate(m, loader).top1, **selection)
            target = scan.layer_targets(options.sensitivity_drop)
            run.write_file("sensitivity.png", scan.plot)
            details["sensitivity"] = scan.to_json()
            scope = "layer"
        if options.rounds > 1 and options.epochs:
            masks = iterative_pruning(model, target, options.rounds,
                                      lambda m, masks: finetune(m, options.epochs, [MaskCallback(masks)]),
                                      scope=scope, **selection)
        else:
            config = MagnitudePruneConfig(target, scope, tuple(options.include), tuple(options.exclude))
            details["config"] = config_to_dict(config)
            masks = prune_(model, config)
            before_finetune = reestimate_and_evaluate(model, data, device)
            model = finetune(model, options.epochs, [MaskCallback(masks)])
        make_permanent(model, masks)
    elif options.method == "agp":
        agp = AGPCallback(options.sparsity, initial_sparsity=measure_sparsity(model).sparsity, scope=scope, **selection)
        model = finetune(model, options.epochs, [agp])
        make_permanent(model, agp.masks)
    elif options.method == "lottery":
        masks = lottery_ticket(model, early, options.sparsity,
                               lambda m, masks: finetune(m, options.epochs, [MaskCallback(masks)]),
                               rounds=options.rounds, scope=scope, **selection)
        make_permanent(model, masks)
    elif options.method == DEPTH:
        config = BlockPruneConfig(blocks=options.blocks, target_macs=options.target_macs,
                                  include=tuple(options.include), exclude=tuple(options.exclude))
        model.eval()
        removed = prune_(model, config, example_inputs=torch.randn(1, *data.image_shape, device=device),
                         calibration=training_batches(data, options.calibration_batches, device))
        details["config"] = config_to_dict(config)
        details["blocks_removed"] = removed.removed
        details["block_distortion"] = removed.distortion
        before_finetune = reestimate_and_evaluate(model, data, device)
        model = finetune(model, options.epochs, [])
    else:
        criterion = STRUCTURED[options.method]
        if options.method == "slimming" and options.penalty_epochs:
            model = finetune(model, options.penalty_epochs, [SlimmingPenalty(options.penalty)])
        config = ChannelPruneConfig(
            ratio=None if options.target_macs is not None else options.sparsity, target_macs=options.target_macs,
            criterion=criterion, scope=scope, round_to=options.round_to, exclude=tuple(options.exclude),
            layer_ratios=dict(options.layer_ratios or {}),
        )
        calibration = training_batches(data, options.calibration_batches, device) if criterion == "thinet" else None
        model.eval()
        pruned = prune_(model, config, example_inputs=torch.randn(1, *data.image_shape, device=device),
                        calibration=calibration)
        details["config"] = config_to_dict(config)
        details["channel_ratio"] = pruned.ratio
        # Layers the ratio asked to shrink but whose channels could not be removed correctly.
        details["channels_left_whole"] = pruned.skipped
        before_finetune = reestimate_and_evaluate(model, data, device)
        model = finetune(model, options.epochs, [])

    if before_finetune is not None:
        details["accuracy_before_finetune"] = before_finetune.top1
    model.eval()
    # Without fine-tuning the model has not changed since that evaluation.
    after = measure_compressed(model, data, device, before_finetune if options.epochs == 0 else None)
    details.update({
        "method": options.method, "options": dataclasses.asdict(options), "scope": scope,
        "sparsity": after["sparsity"], "sparsity_before": before["sparsity"],
        "sparsity_per_layer": measure_sparsity(model).per_layer,
        "macs_before": before["macs"], "macs_after": after["macs"],
        "params_before": before["params"], "params_after": after["params"],
        "size_bytes_before": before["size_bytes"], "size_bytes_after": after["size_bytes"],
        "score_imt2024_before": before["score_imt2024"], "score_imt2024_after": after["score_imt2024"],
        "finetune": finetune.results,
        "note": (DEPTH_NOTE if options.method == DEPTH else STRUCTURED_NOTE if options.method in STRUCTURED
                 else UNSTRUCTURED_NOTE),
    })
    prune_meta = {k: v for k, v in details.items() if k not in ("sparsity_per_layer", "sensitivity")}
    accuracy = Accuracy(correct=after["correct"], total=after["total"], loss=after["loss"])
    return run.finish(model, accuracy, dataset=data.name, test_limit=options.test_limit,
                      source_accuracy=before["accuracy"], details=details, checkpoint_config=train_config,
                      checkpoint_meta={"source": str(checkpoint), **prune_meta})
