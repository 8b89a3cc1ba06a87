"""The job behind `effdl factorize`: checkpoint in, factorized (and fine-tuned) run directory out.

`factorize_checkpoint` loads a checkpoint, measures it, replaces its layers by smaller chains (the
one verb `effdl.compress.factorize.factorize_`), re-estimates BatchNorm, fine-tunes through
effdl.pipelines.finetune (the source run's training config; optionally distilling from the
unfactorized model), measures again and writes the run directory through
effdl.pipelines.run_dir, exactly as `prune_checkpoint` does. Every number in the summary is
measured on the model: MACs and parameters by the counting engine (the new layers are real
convolutions), accuracy on the test split; per-layer ranks and MACs are under `details.layers`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from effdl.errors import EffdlError, UnreadOptionError, unknown_name_error

METHODS = ("svd", "tucker", "cp", "spatial-svd", "depthwise", "grouped")
LOW_RANK = ("svd", "tucker", "cp", "spatial-svd")
# The options only some methods read (config() and factorize_checkpoint): set away from its default
# for another method, one would be ignored without a word (--groups with depthwise or tucker changed
# nothing). config() refuses the rank rules for depthwise/grouped with advice of its own first.
# Every method reads --calibration-images: the fits of depthwise/grouped, each layer's error for all.
READ_BY = {
    "rank": LOW_RANK, "energy": ("svd", "tucker", "spatial-svd"), "ratio": LOW_RANK, "target_macs": LOW_RANK,
    "vbmf": ("tucker",), "round_to": LOW_RANK, "groups": ("grouped",), "scan": LOW_RANK, "scan_images": LOW_RANK,
}
NOTE = ("each factorized layer is a chain of smaller real convolutions / linears: the MACs, parameters and "
        "latency measured are those that run")


@dataclass
class FactorizeOptions:
    """What `effdl factorize` does; see `effdl factorize --help` for each option."""

    method: str
    rank: int | None = None  # the same rank for every layer (Tucker: both channel ranks)
    energy: float | None = None  # per layer, keep this fraction of the squared singular values
    ratio: float | None = None  # per layer, keep at most this fraction of its MACs
    target_macs: float | None = None  # whole model: keep this fraction of the MACs (sensitivity + greedy)
    vbmf: bool = False  # tucker: ranks by VBMF
    round_to: int | None = None  # ranks a rule chooses rounded up to multiples of this (e.g. 8)
    groups: int = 4  # grouped: groups of the kxk convolution
    layers: list[str] = field(default_factory=list)  # include patterns (empty: every layer the method takes)
    exclude: list[str] = field(default_factory=list)
    calibration_images: int = 256  # training images for least-squares fits (depthwise, grouped)
    scan: bool = False  # write the per-layer sensitivity scan (sensitivity.png, details.sensitivity)
    scan_images: int = 500  # training images scoring the sensitivity scan
    epochs: int = 0
    lr: float = 0.01
    batch_size: int | None = None
    distill: float = 0.0  # weight of distillation from the unfactorized model (0: off)
    distill_temperature: float = 4.0
    distill_method: str = "kd"
    train_limit: int | None = None
    test_limit: int | None = None
    device: str = "auto"
    seed: int = 0
    compile: bool = False

    def config(self) -> Any:
        """The technique config these options describe (EffdlError for a bad combination)."""
        from effdl.compress.factorize import METHOD_CONFIGS

        if self.method not in METHODS:
            raise unknown_name_error("factorization method", self.method, METHODS)
        rules = {"rank": self.rank, "energy": self.energy, "ratio": self.ratio, "target_macs": self.target_macs}
        given = {k: v for k, v in rules.items() if v is not None}
        cls = METHOD_CONFIGS[self.method]
        if self.method in ("depthwise", "grouped"):
            stray = [*given, *(["vbmf"] if self.vbmf else []), *(["round_to"] if self.round_to is not None else [])]
            if stray:
                raise UnreadOptionError(f"{self.method} has no rank: drop --{stray[0].replace('_', '-')}", stray[0])
            return cls(groups=self.groups) if self.method == "grouped" else cls()
        rounding = {} if self.round_to is None else {"round_to": self.round_to}
        if self.vbmf:
            if self.method != "tucker":
                raise UnreadOptionError("--vbmf chooses Tucker ranks: use it with --method tucker", "vbmf")
            return cls(vbmf=True, **given, **rounding)
        if not given:
            raise EffdlError(f"--method {self.method} needs one of --rank, --energy, --ratio, --target-macs"
                             + (" or --vbmf" if self.method == "tucker" else ""))
        return cls(**given, **rounding)

    def validate(self) -> None:
        from effdl.pipelines.method_options import check_finetune_options, is_set, refuse_unread_options

        self.config()
        if self.epochs < 0:
            raise EffdlError(f"--epochs must be >= 0, got {self.epochs}")
        if self.calibration_images < 1 or self.scan_images < 1:
            raise EffdlError("--calibration-images and --scan-images must be >= 1")
        if self.scan and self.method not in LOW_RANK:
            raise UnreadOptionError(f"--scan scans ranks; {self.method} has none", "scan")
        refuse_unread_options(self, READ_BY, self.method)
        if is_set(self, "scan_images") and not self.scan and self.target_macs is None:
            raise UnreadOptionError("--scan-images sizes the sensitivity scan of --scan or --target-macs: "
                                    "give one of them too", "scan_images")
        check_finetune_options(self, fine_tunes=bool(self.epochs))


def _batches(data, images: int, device: torch.device, batch: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `images` training images (unaugmented, normalised) and labels in batches on `device`."""
    from effdl.data import BatchLoader

    subset = dataclasses.replace(data, test_images=data.train_images[:images], test_labels=data.train_labels[:images])
    return list(BatchLoader.for_split(subset, "test", batch_size=batch, device=device))


def factorize_checkpoint(
    checkpoint: str | Path, options: FactorizeOptions, out_dir: str | Path, data=None, *, overwrite: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Factorize `checkpoint` as `options` say into run directory `out_dir`; returns the summary.

    An existing run in `out_dir` is refused (EffdlError) unless `overwrite`, which deletes it first.
    `resume`: continue the interrupted fine-tune of the run in `out_dir` (same source and options).
    Bad options, patterns matching nothing and ranks out of range are refused before the run
    directory is created.
    """
    from effdl.compress.distill import finetune_distiller
    from effdl.compress.factorize import factorize_, factorize_sensitivity
    from effdl.core.configs import config_to_dict
    from effdl.device import resolve_device
    from effdl.measure.accuracy import Accuracy
    from effdl.pipelines.compression import (
        load_for_compression, measure_compressed, reestimate_and_evaluate, technique_finetuner,
    )
    from effdl.pipelines.run_dir import CompressedRun

    options.validate()
    config = options.config()
    run = CompressedRun(out_dir, kind="factorize", source=checkpoint, overwrite=overwrite, device=options.device,
                        options=options, resume=resume)
    out_dir = run.path
    model, meta, data = load_for_compression(checkpoint, data, train_limit=options.train_limit,
                                             test_limit=options.test_limit, seed=options.seed, verb="factorize")
    train_config = meta.get("config") or {}
    device = resolve_device(options.device)
    model = model.to(device).eval()
    torch.manual_seed(options.seed)

    before = measure_compressed(model, data, device)
    # made before any change: the callback keeps its own copy of the unfactorized model as the teacher
    distillation = finetune_distiller(model, options.distill, options.distill_temperature, options.distill_method,
                                      input_size=data.image_shape) if options.distill else None
    finetune = technique_finetuner(data, meta, options, callbacks=[distillation] if distillation is not None else [],
                                   run=run)

    selection = {"include": tuple(options.layers), "exclude": tuple(options.exclude)}
    calibration = [x for x, _ in _batches(data, options.calibration_images, device)]
    scored = None
    if options.target_macs is not None or options.scan:
        scan_batches = _batches(data, options.scan_images, device, 250)

        def scored(m) -> float:  # top-1 on the first scan_images training images (never the test split)
            correct = total = 0
            with torch.no_grad():
                for x, y in scan_batches:
                    y = y.argmax(1) if y.ndim > 1 else y
                    correct += int((m(x).argmax(1) == y).sum())
                    total += len(x)
            return correct / max(total, 1)

    details: dict[str, Any] = {}
    scan = None
    if options.scan and options.target_macs is None:
        scan = factorize_sensitivity(model, config, selection=selection, calibration=calibration, accuracy=scored)
    report = factorize_(model, config, selection=selection, calibration=calibration, accuracy=scored)
    scan = scan or report.scan
    if options.epochs:
        run.write_config(finetune.config(options.epochs))
    if scan is not None:
        run.write_file("sensitivity.png", scan.plot)
        details["sensitivity"] = scan.to_json()
    before_finetune = reestimate_and_evaluate(model, data, device)
    model = finetune(model, options.epochs, [])
    model.eval()
    after = measure_compressed(model, data, device, before_finetune if options.epochs == 0 else None)
    details.update({
        "method": options.method, "options": dataclasses.asdict(options), "config": config_to_dict(config),
        "layers": {n: dataclasses.asdict(layer) for n, layer in report.layers.items()},
        "ranks": report.ranks, "skipped": report.skipped,
        "accuracy_before_finetune": before_finetune.top1,
        "macs_before": before["macs"], "macs_after": after["macs"],
        "params_before": before["params"], "params_after": after["params"],
        "size_bytes_before": before["size_bytes"], "size_bytes_after": after["size_bytes"],
        "score_imt2024_before": before["score_imt2024"], "score_imt2024_after": after["score_imt2024"],
        "finetune": finetune.results, "note": NOTE,
    })
    header = {k: v for k, v in details.items() if k not in ("sensitivity", "layers")}
    accuracy = Accuracy(correct=after["correct"], total=after["total"], loss=after["loss"])
    return run.finish(model, accuracy, dataset=data.name, test_limit=options.test_limit,
                      source_accuracy=before["accuracy"], details=details, checkpoint_config=train_config,
                      checkpoint_meta={"source": str(checkpoint), **header})
