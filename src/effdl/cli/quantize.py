"""`effdl quantize CKPT --method M --out runs/NAME`: quantize a checkpoint, optionally fine-tune it.

Methods: ptq-int8 (BatchNorm folded, int8 per-channel weights, calibrated int8 activations),
ptq-fp16 / ptq-bf16 (half precision), int8-weight (weights only), qat (fake quantization at
--bits / --act-bits with --qat-method, first/last layer at --first-last-bits), binaryconnect,
xnor (BWN with --no-binary-acts), ternary, kmeans (--bits codebook), and sensitivity (a per-layer
scan at --bits, written as a table, plot and JSON; no checkpoint). Training methods fine-tune for
--epochs with the trainer, from the source run's training config (data, augmentation, weight
decay, label smoothing, batch size unless --batch-size). The run directory gets best.safetensors
(the final quantized model, exactly as evaluated) and summary.json (accuracy on the full test split, bit-widths verified against
the weights, and the imt2024 score; the core fields every run kind writes, so `effdl report` reads
it). An existing run at --out is refused unless --overwrite.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from effdl.cli.common import add_data_args, add_device_arg, add_distill_args, checkpoint_file, dataset_from_args
from effdl.errors import EffdlError
from effdl.pipelines.quantize import METHODS  # effdl.errors only: `effdl quantize --help` stays fast

if TYPE_CHECKING:
    from effdl.pipelines.quantize import QuantizeOptions


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
                   help="ptq-int8 and qat: also quantize the outputs feeding float ops (residual Adds), so an "
                        "int8 runtime runs every conv on integers (default on)")
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
    p.add_argument("--batch-size", type=int, default=None,
                   help="fine-tuning batch size (default: the source run's, else 128)")
    add_distill_args(p, "the float model")
    p.add_argument("--out", required=True, help="run directory to write, e.g. runs/r20-int8")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run at --out (default: refuse, nothing is deleted)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted fine-tune of the run at --out (started with the same checkpoint and options)")
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


def options_from_args(args: argparse.Namespace) -> QuantizeOptions:
    """The quantization job the command line describes."""
    from effdl.pipelines.quantize import QuantizeOptions

    return QuantizeOptions(
        method=args.method, bits=args.bits, act_bits="same" if args.act_bits == "same" else _optional_bits(args.act_bits),
        qat_method=args.qat_method, first_last_bits=_optional_bits(args.first_last_bits),
        overrides=_overrides(args.override), calibration=args.calibration,
        calibration_images=args.calibration_images, quantize_outputs=args.quantize_outputs,
        stochastic=args.stochastic, binary_acts=args.binary_acts, float_first_last=args.float_first_last,
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, bf16=args.bf16, compile=args.compile,
        distill=args.distill, distill_temperature=args.distill_temperature, distill_method=args.distill_method,
        train_limit=args.train_limit,
        test_limit=args.test_limit, data_root=args.data_root, device=args.device,
    )


def run(args: argparse.Namespace) -> int:
    from effdl.checkpoint import read_checkpoint_meta
    from effdl.pipelines.quantize import quantization_config, quantize_sensitivity
    from effdl.recipes.stages import run_single_stage

    options = options_from_args(args)
    options.validate()
    quantization_config(options)  # bad bits fail before any data is read
    data = dataset_from_args(args, read_checkpoint_meta(args.checkpoint))  # --train-limit / --test-limit applied
    if options.method == "sensitivity":
        from rich.console import Console

        from effdl.compress.quantize import sensitivity_table

        baseline, results = quantize_sensitivity(args.checkpoint, options, args.out, data, overwrite=args.overwrite)
        Console().print(sensitivity_table(baseline, results))
        return 0
    # a one-stage recipe: the quantize stage, with the same input check a recipe's plan makes
    s = run_single_stage("quantize", options, args.out, source=args.checkpoint, overwrite=args.overwrite, data=data,
                         resume=args.resume)
    print(json.dumps({"method": s["details"]["method"], "accuracy": s["accuracy"], "correct": s["correct"],
                      "total": s["total"], "source_accuracy": s["source_accuracy"],
                      "drop_points": s["details"]["drop_points"], "score": s["details"]["score"],
                      "run_dir": str(args.out)}))
    return 0
