"""The job behind `effdl quantize`: checkpoint in, quantized (and fine-tuned) run directory out.

`quantize_run` loads a float checkpoint, measures it, quantizes it (`quantize_model`: BatchNorm
folded for int8 PTQ, statistics re-estimated after methods that replace the weights, activation
ranges calibrated on training images), fine-tunes training methods through effdl.pipelines.finetune
(the source run's training config), evaluates the final model and writes the run directory through
effdl.pipelines.run_dir: best.safetensors holds exactly the evaluated model (the last epoch's), and
summary.json the core fields with the bit-widths read back from the weights and the imt2024 score
under `details`. `quantize_sensitivity` is the per-layer scan (no checkpoint written).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from effdl.console import say
from effdl.errors import EffdlError, UnreadOptionError, unknown_name_error

if TYPE_CHECKING:
    import torch
    from torch import nn

    from effdl.data import ImageDataset

METHODS = ("ptq-int8", "ptq-fp16", "ptq-bf16", "int8-weight", "qat", "binaryconnect", "xnor", "ternary", "kmeans",
           "sensitivity")
# Methods that replace the weights wholesale: the BatchNorm statistics are re-estimated after them.
WEIGHT_REPLACING = ("binaryconnect", "xnor", "ternary", "kmeans")
TRAINABLE = ("qat", "binaryconnect", "xnor", "ternary", "kmeans")
FIXED_BITS = {"ptq-int8": 8, "int8-weight": 8, "ptq-fp16": 16, "ptq-bf16": 16, "binaryconnect": 1, "xnor": 1, "ternary": 2}
# The options only some methods read: set away from its default for another method, one would be
# ignored without a word (--act-bits with ptq-int8 quantized activations to 8 bits all the same).
READ_BY = {
    "act_bits": ("qat",), "qat_method": ("qat",), "first_last_bits": ("qat",), "overrides": ("qat",),
    "calibration": ("ptq-int8",), "quantize_outputs": ("ptq-int8", "qat"), "stochastic": ("binaryconnect",),
    "binary_acts": ("binaryconnect", "xnor"), "float_first_last": ("binaryconnect", "xnor", "ternary"),
}


@dataclass
class QuantizeOptions:
    """What `effdl quantize` does; see `effdl quantize --help` for each option."""

    method: str
    bits: int | None = None  # weight bits (qat, kmeans, sensitivity: default 4)
    act_bits: int | None | Literal["same"] = "same"  # qat activation bits; None: float activations
    qat_method: str = "lsq"
    first_last_bits: int | None = 8
    overrides: dict[str, Any] = field(default_factory=dict)  # qat: {layer glob: bits or [wbits, abits]}
    calibration: str = "minmax"
    calibration_images: int = 512
    quantize_outputs: bool = True
    stochastic: bool = False
    binary_acts: bool | None = None  # None: on for xnor, off for binaryconnect
    float_first_last: bool = False
    epochs: int = 0
    lr: float = 0.01
    batch_size: int | None = None  # fine-tuning batch size; None: the source run's
    bf16: bool = False  # off unless asked: bf16 rounds values between the quantizer's grid points
    compile: bool = False
    distill: float = 0.0  # weight of distillation from the float model during fine-tuning (0: off)
    distill_temperature: float = 4.0
    distill_method: str = "kd"  # effdl.compress.distill methods: kd, dkd, kd-std, fitnets, at, overhaul
    train_limit: int | None = None
    test_limit: int | None = None
    data_root: str | None = None
    device: str = "auto"
    seed: int = 0

    def validate(self) -> None:
        from effdl.pipelines.method_options import check_finetune_options, refuse_unread_options

        if self.method not in METHODS:
            raise unknown_name_error("quantization method", self.method, METHODS)
        refuse_unread_options(self, READ_BY, self.method, flags={"overrides": "--override"})
        if self.method in FIXED_BITS and self.bits not in (None, FIXED_BITS[self.method]):
            raise UnreadOptionError(f"--method {self.method} quantizes to {FIXED_BITS[self.method]} bits; "
                                    f"got --bits {self.bits}", "bits")
        if self.epochs < 0:
            raise EffdlError(f"--epochs must be >= 0, got {self.epochs}")
        if self.epochs and self.method not in TRAINABLE:
            raise UnreadOptionError(f"--epochs fine-tunes training methods ({', '.join(TRAINABLE)}), not {self.method}",
                                    "epochs")
        check_finetune_options(self, fine_tunes=bool(self.epochs))
        from effdl.compress.quantize.api import MIN_CALIBRATION_IMAGES

        if self.calibration_images < MIN_CALIBRATION_IMAGES:
            raise EffdlError(f"calibration needs at least {MIN_CALIBRATION_IMAGES} images (a few hundred is best): "
                             f"--calibration-images {self.calibration_images}")


def quantization_config(options: QuantizeOptions):
    """The technique's config (effdl.compress.quantize) that `options` describe; None for sensitivity."""
    from effdl.compress.quantize import (
        BinaryConnectConfig, FakeQuantConfig, Float16Config, Int8StaticConfig, Int8WeightOnlyConfig, KMeansConfig,
        TernaryConfig, XnorConfig,
    )

    method = options.method
    if method == "sensitivity":
        return None
    if method == "ptq-int8":
        return Int8StaticConfig(calibration=options.calibration, quantize_outputs=options.quantize_outputs)
    if method in ("ptq-fp16", "ptq-bf16"):
        return Float16Config("float16" if method == "ptq-fp16" else "bfloat16")
    if method == "int8-weight":
        return Int8WeightOnlyConfig()
    if method == "qat":
        bits = 4 if options.bits is None else options.bits
        act_bits = bits if options.act_bits == "same" else options.act_bits
        return FakeQuantConfig(weight_bits=bits, act_bits=act_bits, method=options.qat_method,
                               first_last_bits=options.first_last_bits, overrides=dict(options.overrides),
                               quantize_outputs=options.quantize_outputs)
    if method == "binaryconnect":
        return BinaryConnectConfig(stochastic=options.stochastic, binary_acts=bool(options.binary_acts),
                                   skip_first_last=options.float_first_last)
    if method == "xnor":
        return XnorConfig(binary_acts=options.binary_acts is not False, skip_first_last=options.float_first_last)
    if method == "ternary":
        return TernaryConfig(skip_first_last=options.float_first_last)
    return KMeansConfig(4 if options.bits is None else options.bits)


def quantize_model(
    model: nn.Module, config: Any, data: ImageDataset, *, calibration_images: int = 512,
    device: torch.device | str = "cpu", replaced_weights: bool | None = None,
) -> nn.Module:
    """Quantize `model` in place with technique config `config` and make it ready to evaluate:
    BatchNorm folded first for int8 static PTQ, BatchNorm statistics re-estimated on
    `calibration_images` training images after methods that replace the weights wholesale
    (`replaced_weights`, default: the binary, ternary and k-means configs), activation ranges
    calibrated on them when any layer quantizes activations. Returns the model (on `device`)."""
    from effdl.compress.quantize import (
        Int8StaticConfig, calibrate, calibration_images as take_images, fold_batchnorm, quantize_, quantized_layers,
    )
    from effdl.compress.quantize import BinaryConnectConfig, KMeansConfig, TernaryConfig, XnorConfig
    from effdl.train.batchnorm import reestimate_batchnorm

    if isinstance(config, Int8StaticConfig):
        fold_batchnorm(model)
    quantize_(model, config)
    if replaced_weights is None:
        replaced_weights = isinstance(config, (BinaryConnectConfig, XnorConfig, TernaryConfig, KMeansConfig))
    needs_calibration = any(layer.act_quantizer is not None for layer in quantized_layers(model).values())
    if replaced_weights or needs_calibration:
        images = take_images(data, calibration_images).to(device)
        say(f"calibrating on {len(images):,} training images...")
        if replaced_weights:
            reestimate_batchnorm(model, images.split(64))
        if needs_calibration:
            calibrate(model, images)
    return model


def _load(source: str | Path, options: QuantizeOptions, data: ImageDataset | None):
    from effdl.pipelines.compression import load_for_compression

    return load_for_compression(source, data, train_limit=options.train_limit, test_limit=options.test_limit,
                                seed=options.seed, data_root=options.data_root, verb="quantize")


def quantize_run(
    source: str | Path, options: QuantizeOptions, out_dir: str | Path, data: ImageDataset | None = None,
    *, overwrite: bool = False, resume: bool = False,
) -> dict[str, Any]:
    """Quantize checkpoint `source` as `options` say into run directory `out_dir`; returns the summary.
    `resume`: continue the interrupted fine-tune of the run in `out_dir` (same source and options).

    `data`: the dataset to calibrate, fine-tune and evaluate on, limits applied (default: the one
    the checkpoint records, with `options`' limits). Raises EffdlError for bad options, a checkpoint
    that is already quantized, or an existing run at `out_dir` (unless `overwrite`, which deletes it
    first); a refused run leaves nothing behind.
    """
    import torch

    from effdl.compress.distill import finetune_distiller
    from effdl.compress.quantize import QuantizationCallback, verify_model_bits
    from effdl.data import BatchLoader
    from effdl.device import resolve_device
    from effdl.measure import evaluate
    from effdl.pipelines.compression import technique_finetuner
    from effdl.pipelines.run_dir import CompressedRun

    options.validate()
    if options.method == "sensitivity":
        raise EffdlError("the sensitivity method writes a scan, not a run: call quantize_sensitivity")
    config = quantization_config(options)
    model, meta, data = _load(source, options, data)  # refuses a quantized checkpoint before out_dir is claimed
    source_config = meta.get("config") or {}
    run = CompressedRun(out_dir, kind="quantize", source=source, overwrite=overwrite, device=options.device,
                        options=options, resume=resume)
    finetune = technique_finetuner(data, meta, options, run=run)
    device = resolve_device(options.device)
    model = model.to(device)
    run.create()
    loader = BatchLoader.for_split(data, "test", batch_size=256, device=device)

    say(f"evaluating the float model on {len(loader.labels):,} test images...")
    source_accuracy = evaluate(model, loader).top1
    torch.manual_seed(options.seed)  # what is initialised at random (distillation connectors) follows the seed
    # Made before quantize_model changes the model in place: the callback copies the float model as teacher.
    if options.distill:
        finetune.callbacks.append(finetune_distiller(model, options.distill, options.distill_temperature,
                                                     options.distill_method, input_size=data.image_shape))
    quantize_model(model, config, data, calibration_images=options.calibration_images, device=device,
                   replaced_weights=options.method in WEIGHT_REPLACING)
    before_finetune = None
    if finetune.planned is not None:
        run.write_config(finetune.planned)
        say(f"evaluating the {options.method} model before fine-tuning...")
        before_finetune = evaluate(model.eval(), loader).top1
    model = finetune(model, options.epochs, [QuantizationCallback()])
    model = model.to(device).eval()
    say(f"evaluating the {options.method} model on {len(loader.labels):,} test images...")
    accuracy = evaluate(model, loader)
    training = None
    if finetune.results:
        training = {**finetune.results[-1],
                    "distill": {"alpha": options.distill, "temperature": options.distill_temperature,
                                "method": options.distill_method}
                    if options.distill else None}
    from effdl.core.configs import config_to_dict  # here, not at the top: `effdl quantize --help` needs no torch

    details = {
        "method": options.method, "config": config_to_dict(config), "options": asdict(options),
        "drop_points": round(100 * (source_accuracy - accuracy.top1), 3),
        "accuracy_before_finetune": accuracy.top1 if before_finetune is None else before_finetune,
        "layer_bits": verify_model_bits(model), "training": training, "score": _score(model),
    }
    return run.finish(model, accuracy, dataset=data.name, test_limit=options.test_limit,
                      source_accuracy=source_accuracy, details=details, checkpoint_config=source_config,
                      checkpoint_meta={"method": options.method, "config": config_to_dict(config)})


def quantize_sensitivity(
    source: str | Path, options: QuantizeOptions, out_dir: str | Path, data: ImageDataset | None = None,
    *, overwrite: bool = False,
) -> tuple[float, Any]:
    """Per-layer sensitivity of checkpoint `source` to `options.bits`-bit weights (default 4): writes
    `<out_dir>/sensitivity.png` and `sensitivity.json`; returns (baseline accuracy, per-layer results)."""
    from effdl.compress.quantize import FakeQuantConfig, plot_sensitivity, sensitivity_scan
    from effdl.compress.quantize.sensitivity import sensitivity_records
    from effdl.data import BatchLoader
    from effdl.device import resolve_device
    from effdl.fileio import claim_run_dir
    import json

    bits = 4 if options.bits is None else options.bits
    FakeQuantConfig(weight_bits=bits, act_bits=None)  # validates the bits
    model, _, data = _load(source, options, data)
    out = claim_run_dir(out_dir, overwrite=overwrite, sources=(source,))
    device = resolve_device(options.device)
    model = model.to(device)
    out.mkdir(parents=True, exist_ok=True)
    loader = BatchLoader.for_split(data, "test", batch_size=256, device=device)
    baseline, results = sensitivity_scan(model, loader, bits)
    plot_sensitivity(baseline, results, out / "sensitivity.png")
    (out / "sensitivity.json").write_text(json.dumps(sensitivity_records(baseline, results), indent=2) + "\n")
    return baseline, results


def _score(model: nn.Module) -> dict[str, Any] | None:
    try:
        from effdl.measure.scoring import score
    except ImportError:
        return None
    result = score(model.cpu(), "imt2024")
    return {"scorer": "imt2024", "score": result.score, "params": result.params, "ops": result.ops}
