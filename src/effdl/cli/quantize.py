"""`effdl quantize CKPT --method M --out runs/NAME`: quantize a checkpoint, optionally fine-tune it.

Methods: ptq-int8 (BatchNorm folded, int8 per-channel weights, calibrated int8 activations),
ptq-fp16 / ptq-bf16 (half precision), int8-weight (weights only), qat (fake quantization at
--bits / --act-bits with --qat-method, first/last layer at --first-last-bits), binaryconnect,
xnor (BWN with --no-binary-acts), ternary, kmeans (--bits codebook), and sensitivity (a per-layer
scan at --bits, written as a table, plot and JSON; no checkpoint). Training methods fine-tune for
--epochs with the trainer. The run directory gets best.safetensors (the final
quantized model) and summary.json (accuracy on the full test split, bit-widths verified against
the weights, and the imt2024 score; the core fields every run kind writes, so `effdl report` reads
it). An existing run at --out is refused unless --overwrite.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effdl.cli.common import add_data_args, add_device_arg, add_distill_args, checkpoint_file, dataset_from_args
from effdl.errors import EffdlError
from effdl.fileio import claim_run_dir

if TYPE_CHECKING:  # torch & co. are imported where used, so that `effdl --help` stays fast
    import torch

    from effdl.compress.distill import Distillation
    from effdl.data import BatchLoader

METHODS = ("ptq-int8", "ptq-fp16", "ptq-bf16", "int8-weight", "qat", "binaryconnect", "xnor", "ternary", "kmeans",
           "sensitivity")
# Methods that replace the weights wholesale: the BatchNorm statistics are re-estimated after them.
WEIGHT_REPLACING = ("binaryconnect", "xnor", "ternary", "kmeans")
TRAINABLE = ("qat", "binaryconnect", "xnor", "ternary", "kmeans")
FIXED_BITS = {"ptq-int8": 8, "int8-weight": 8, "ptq-fp16": 16, "ptq-bf16": 16, "binaryconnect": 1, "xnor": 1, "ternary": 2}


def _optional_bits(text: str | int | None) -> int | None:
    if text is None or isinstance(text, int):
        return text
    if text.lower() in ("none", "float"):
        return None
    try:
        return int(text)
    except ValueError:
        raise EffdlError(f"expected a number of bits or 'none', got '{text}'") from None


def register(subparsers) -> None:
    p = subparsers.add_parser("quantize", help="quantize a checkpoint (PTQ, QAT, binary, ternary, k-means)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=checkpoint_file, help="a float .safetensors checkpoint")
    p.add_argument("--method", required=True, choices=METHODS, help=f"one of {', '.join(METHODS)} (see above)")
    p.add_argument("--bits", type=int, default=None, help="weight bits (qat, kmeans: default 4; sensitivity: 4)")
    p.add_argument("--act-bits", default="same",
                   help="activation bits for qat, or 'none' (default: same as --bits)")
    p.add_argument("--qat-method", default="lsq", choices=("lsq", "pact", "dorefa", "minmax"),
                   help="qat quantizer: lsq, pact, dorefa or minmax (default lsq)")
    p.add_argument("--first-last-bits", default=8,
                   help="bits of the first and last layer in qat, or 'none' (default 8)")
    p.add_argument("--override", action="append", default=[], metavar="LAYER=BITS",
                   help="per-layer bits in qat, e.g. layers.0.*=6 or fc=8,8 (weight,act); repeatable")
    p.add_argument("--calibration", default="minmax", choices=("minmax", "percentile", "mse"),
                   help="activation range calibration: minmax, percentile or mse (default minmax)")
    p.add_argument("--calibration-images", type=int, default=512, help="training images used to calibrate")
    p.add_argument("--quantize-outputs", action=argparse.BooleanOptionalAction, default=True,
                   help="ptq-int8: also quantize the outputs feeding float ops (residual Adds), so an int8 "
                        "runtime runs every conv on integers (default on)")
    p.add_argument("--stochastic", action="store_true", help="stochastic BinaryConnect")
    p.add_argument("--binary-acts", action=argparse.BooleanOptionalAction, default=None,
                   help="binary activations (default: on for xnor, off for binaryconnect)")
    p.add_argument("--float-first-last", action="store_true",
                   help="binaryconnect, xnor, ternary: keep the first and last layer in float (as BWN/XNOR-Net do)")
    p.add_argument("--epochs", type=int, default=0, help="fine-tuning epochs for training methods (default 0)")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning peak learning rate, cosine schedule (default 0.01)")
    p.add_argument("--bf16", action="store_true",
                   help="fine-tune under bf16 autocast (about 2x faster on AMX CPUs and GPUs; evaluation stays fp32)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training step: fuses the fake-quant ops (1.5-2.5x on CPU, after a "
                        "compile of a few minutes)")
    p.add_argument("--batch-size", type=int, default=128, help="fine-tuning batch size (default 128)")
    add_distill_args(p, "the float model")
    p.add_argument("--out", required=True, help="run directory to write, e.g. runs/r20-int8")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run at --out (default: refuse, nothing is deleted)")
    add_data_args(p)
    add_device_arg(p)
    p.set_defaults(func=run)


def _overrides(items: list[str]) -> dict[str, Any]:
    overrides = {}
    for item in items:
        name, sep, bits = item.partition("=")
        try:
            values = [int(b) for b in bits.split(",")]
        except ValueError:
            values = []
        if not sep or not name or len(values) not in (1, 2):
            raise EffdlError(f"--override expects LAYER=BITS or LAYER=WBITS,ABITS, got '{item}'")
        overrides[name] = values[0] if len(values) == 1 else values
    return overrides


def make_config(args: argparse.Namespace):
    """The quantization config the command line describes."""
    from effdl.compress.quantize import (
        BinaryConnectConfig, FakeQuantConfig, Float16Config, Int8StaticConfig, Int8WeightOnlyConfig, KMeansConfig,
        TernaryConfig, XnorConfig,
    )

    method = args.method
    if method in FIXED_BITS and args.bits not in (None, FIXED_BITS[method]):
        raise EffdlError(f"--method {method} quantizes to {FIXED_BITS[method]} bits; got --bits {args.bits}")
    if method == "ptq-int8":
        return Int8StaticConfig(calibration=args.calibration, quantize_outputs=args.quantize_outputs)
    if method in ("ptq-fp16", "ptq-bf16"):
        return Float16Config("float16" if method == "ptq-fp16" else "bfloat16")
    if method == "int8-weight":
        return Int8WeightOnlyConfig()
    if method == "qat":
        bits = 4 if args.bits is None else args.bits
        act_bits = bits if args.act_bits == "same" else _optional_bits(args.act_bits)
        return FakeQuantConfig(weight_bits=bits, act_bits=act_bits, method=args.qat_method,
                               first_last_bits=_optional_bits(args.first_last_bits),
                               overrides=_overrides(args.override))
    if method == "binaryconnect":
        return BinaryConnectConfig(stochastic=args.stochastic, binary_acts=bool(args.binary_acts),
                                   skip_first_last=args.float_first_last)
    if method == "xnor":
        return XnorConfig(binary_acts=args.binary_acts is not False, skip_first_last=args.float_first_last)
    if method == "ternary":
        return TernaryConfig(skip_first_last=args.float_first_last)
    return KMeansConfig(4 if args.bits is None else args.bits)


def _fine_tune(model, data, args: argparse.Namespace, out: Path, device: torch.device,
               distillation: Distillation | None) -> dict[str, Any]:
    from effdl.compress.quantize import QuantizationCallback
    from effdl.models import model_spec
    from effdl.train import Trainer, make_config as make_train_config

    spec = model_spec(model) or {}
    train_config = make_train_config({
        "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "schedule": "cosine",
        "dataset": data.name, "data_root": args.data_root, "model": spec.get("name", "resnet20"),
        "device": str(device), "out_dir": str(out.parent), "name": out.name,
        # Off unless asked: bf16 rounds values between the quantizer's grid points during training
        # (the final evaluation is fp32 either way); 4-bit QAT under bf16 met its target (BENCHMARKS.md).
        "bf16": args.bf16, "compile": args.compile,  # progress: one line per epoch in logs, a bar in a terminal
    })
    callbacks = [QuantizationCallback()] + ([distillation] if distillation is not None else [])
    print(f"fine-tuning for {args.epochs} epoch(s) on {len(data.train_labels):,} training images"
          f"{' (compiling the step first: minutes)' if args.compile else ''}...", file=sys.stderr)
    trainer = Trainer(model, data, train_config, callbacks=callbacks, run_dir=out,
                      resume_hint=f"the fine-tune stopped; start it again with --overwrite --out {out}")
    result = trainer.fit()
    return {"epochs": args.epochs, "lr": args.lr, "bf16": args.bf16, "compiled": args.compile,
            "distill": {"alpha": args.distill, "temperature": args.distill_temperature} if distillation is not None else None,
            "time_s": round(result.time_s, 1),
            "train_best_accuracy": result.best_eval_accuracy}


def run(args: argparse.Namespace) -> int:
    from effdl.checkpoint import load_model, save_model
    from effdl.compress.distill import Distillation, check_distill_options
    from effdl.compress.quantize import (
        calibrate, calibration_images, fold_batchnorm, is_quantized, quantize_, quantized_layers, verify_model_bits,
    )
    from effdl.data import BatchLoader
    from effdl.device import resolve_device
    from effdl.measure import evaluate
    from effdl.measure.accuracy import check_model_fits_data
    from effdl.train.batchnorm import reestimate_batchnorm

    if args.epochs < 0:
        raise EffdlError(f"--epochs must be >= 0, got {args.epochs}")
    if args.epochs and args.method not in TRAINABLE:
        raise EffdlError(f"--epochs fine-tunes training methods ({', '.join(TRAINABLE)}), not {args.method}")
    check_distill_options(args.distill, args.distill_temperature)
    if args.distill and not args.epochs:
        raise EffdlError("--distill acts during fine-tuning: give --epochs too")
    config = None if args.method == "sensitivity" else make_config(args)
    model, meta = load_model(args.checkpoint)
    if args.method != "sensitivity" and is_quantized(model):  # before --out is claimed: nothing is left behind
        raise EffdlError(f"{args.checkpoint} is already quantized; quantize the float checkpoint instead")
    data = dataset_from_args(args, meta)  # --train-limit / --test-limit applied while loading
    check_model_fits_data(model, data)
    out = claim_run_dir(args.out, overwrite=args.overwrite, sources=(args.checkpoint,))
    device = resolve_device(args.device)
    model = model.to(device)
    out.mkdir(parents=True, exist_ok=True)
    loader = BatchLoader.for_split(data, "test", batch_size=256, device=device)
    if args.method == "sensitivity":
        return _sensitivity(model, loader, args, out)

    print(f"evaluating the float model on {len(loader.labels):,} test images...", file=sys.stderr)
    source_accuracy = evaluate(model, loader).top1
    # Made before quantize_ changes the model in place: the callback copies the float model as teacher.
    distillation = Distillation(model, args.distill, args.distill_temperature) if args.distill else None
    if args.method == "ptq-int8":
        fold_batchnorm(model)
    quantize_(model, config)
    replaced_weights = args.method in WEIGHT_REPLACING
    needs_calibration = any(layer.act_quantizer is not None for layer in quantized_layers(model).values())
    if replaced_weights or needs_calibration:
        images = calibration_images(data, args.calibration_images).to(device)
        print(f"calibrating on {len(images):,} training images...", file=sys.stderr)
        if replaced_weights:
            reestimate_batchnorm(model, images.split(64))
        if needs_calibration:
            calibrate(model, images)
    training = _fine_tune(model, data, args, out, device, distillation) if args.epochs else None
    model = model.to(device).eval()
    print(f"evaluating the {args.method} model on {len(loader.labels):,} test images...", file=sys.stderr)
    accuracy = evaluate(model, loader)
    from effdl.models import model_spec

    summary = {
        # The fields every run kind writes (effdl.report.runs.RunSummary), then the quantization's own.
        "name": out.name, "kind": "quantize", "dataset": data.name, "model": model_spec(model),
        "accuracy": accuracy.top1, "correct": accuracy.correct, "total": accuracy.total,
        "checkpoint": "best.safetensors",
        "evaluated_on": "test" if args.test_limit is None else f"test (balanced subset of {accuracy.total})",
        "method": args.method, "config": repr(config), "source": str(args.checkpoint),
        "source_accuracy": source_accuracy, "drop_points": round(100 * (source_accuracy - accuracy.top1), 3),
        "layer_bits": verify_model_bits(model), "training": training, "score": _score(model),
    }
    save_model(out / "best.safetensors", model, config={**meta.get("config", {}), "dataset": data.name},
               metrics={"accuracy": accuracy.top1, "correct": accuracy.correct, "total": accuracy.total},
               extra_meta={"quantize": {"method": args.method, "config": repr(config)}})
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("method", "accuracy", "correct", "total", "source_accuracy",
                                              "drop_points", "score")} | {"run_dir": str(out)}))
    return 0


def _score(model) -> dict[str, Any] | None:
    try:
        from effdl.measure.scoring import score
    except ImportError:
        return None
    result = score(model.cpu(), "imt2024")
    return {"scorer": "imt2024", "score": result.score, "params": result.params, "ops": result.ops}


def _sensitivity(model, loader: BatchLoader, args: argparse.Namespace, out: Path) -> int:
    from effdl.compress.quantize import FakeQuantConfig, plot_sensitivity, sensitivity_scan, sensitivity_table
    from effdl.compress.quantize.sensitivity import sensitivity_records

    bits = 4 if args.bits is None else args.bits
    FakeQuantConfig(weight_bits=bits, act_bits=None)  # validates the bits
    baseline, results = sensitivity_scan(model, loader, bits)
    plot_sensitivity(baseline, results, out / "sensitivity.png")
    (out / "sensitivity.json").write_text(json.dumps(sensitivity_records(baseline, results), indent=2) + "\n")
    from rich.console import Console

    Console().print(sensitivity_table(baseline, results))
    return 0
