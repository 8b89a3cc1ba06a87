"""`effdl export CKPT|MODEL --out model.onnx [--int8]`: export to ONNX and verify it against PyTorch.

Any model exports as a float graph, quantized ones included (their fake-quant arithmetic is
written with float ops). `--int8` writes an int8 QDQ graph instead (see effdl.deploy.int8): a
float checkpoint is BatchNorm-folded, quantized and calibrated on training images first; a
checkpoint already quantized on 8-bit grids (ptq-int8, 8-bit QAT minmax / lsq) is exported as it
is, others are refused with the reason. The input size is the model's own (its training data's),
`--input-size` overrides it. The file is verified before it takes the name `--out` (a rejected file
is deleted): float models to float rounding, quantized ones on training images by top-1 agreement
and error in steps of the output grid (effdl.deploy.onnx.verify_onnx).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from effdl.cli.common import add_data_args, checkpoint_or_model, dataset_from_args, int_list, model_from_ref

if TYPE_CHECKING:  # torch, onnx & co. are imported where used, so that `effdl --help` stays fast
    from torch import nn


CALIBRATION_METHODS = ("minmax", "percentile", "mse")


def add_int8_args(parser: argparse.ArgumentParser) -> None:
    """--int8 and the calibration options (shared with `effdl bench`)."""
    parser.add_argument("--int8", action="store_true",
                        help="int8 QDQ ONNX (a float checkpoint is BN-folded, quantized and calibrated first)")
    parser.add_argument("--calibration", default="minmax", choices=CALIBRATION_METHODS,
                        help="activation range calibration for --int8 (default minmax)")
    parser.add_argument("--calibration-images", type=int, default=512,
                        help="training images used to calibrate for --int8 (default 512)")
    add_data_args(parser)


def int8_from_args(model: nn.Module, meta: dict, args: argparse.Namespace) -> nn.Module:
    """The int8 fake-quant model to export: `model` itself if already int8, else calibrated on training images."""
    from effdl.compress.quantize import calibration_images, is_quantized
    from effdl.deploy.int8 import int8_model
    from effdl.measure.accuracy import check_model_fits_data

    images = None
    if not is_quantized(model):
        data = dataset_from_args(args, data_config(model, meta), model)
        check_model_fits_data(model, data)
        images = calibration_images(data, args.calibration_images)
        print(f"calibrating int8 ranges on {len(images):,} training images...", file=sys.stderr)
    return int8_model(model.cpu().eval(), images, args.calibration)


def data_config(model: nn.Module, meta: dict) -> dict:
    """The checkpoint's run config, with the dataset its data record names when the config has none."""
    from effdl.models.registry import data_meta

    config = dict(meta.get("config") or {})
    if not config.get("dataset") and (data_meta(model) or {}).get("dataset"):
        config["dataset"] = data_meta(model)["dataset"]
    return config


def check_images_from_args(model: nn.Module, meta: dict, args: argparse.Namespace):
    """Images to verify an export of `model` on, or None for random inputs.

    A quantized model is judged on real images (`CHECK_IMAGES` training images, another draw
    than calibration's) from --data or the checkpoint's dataset; when none can be loaded, random
    inputs are used and the check's note says so. A float model is checked on random inputs
    unless --data is given.
    """
    from effdl.compress.quantize import calibration_images
    from effdl.deploy.onnx import CHECK_IMAGES, rounds
    from effdl.errors import EffdlError
    from effdl.measure.accuracy import check_model_fits_data

    if not (rounds(model) or args.data):
        return None
    try:
        data = dataset_from_args(args, data_config(model, meta), model)
    except EffdlError as exc:
        if args.data:
            raise
        print(f"note: no images to check the export on ({exc}); using random inputs", file=sys.stderr)
        return None
    check_model_fits_data(model, data)  # a model of other classes, judged on these images, means nothing
    return calibration_images(data, min(CHECK_IMAGES, len(data.train_labels)), seed=1)


EXPORTER_NAMES = ("dynamo", "torchscript")


def register(subparsers) -> None:
    # Exporter names are spelled out, not imported from effdl.deploy.onnx (torch, onnx): that import
    # would cost seconds before any argument error (tests/test_cli.py checks they match EXPORTERS).
    p = subparsers.add_parser("export", help="export a checkpoint or model to ONNX (fp32 or int8) and verify it",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=checkpoint_or_model, help="checkpoint (.safetensors) or registered model name")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--input-size", default=None,
                   help="C,H,W of one input (default: the model's own, from its training data; else 3,32,32)")
    p.add_argument("--num-classes", type=int, default=10, help="classes, for a model name (default 10)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size to 1 instead of dynamic")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--exporter", default="auto", choices=["auto", *EXPORTER_NAMES],
                   help="torch exporter: auto (dynamo, falling back to torchscript tracing; default)")
    add_int8_args(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from effdl.deploy.int8 import export_int8_verified, optimized_op_counts
    from effdl.deploy.onnx import export_verified, read_metadata

    shape = int_list(args.input_size, "--input-size", length=3) if args.input_size else None
    model, meta = model_from_ref(args.model, num_classes=args.num_classes)
    print(f"exporting {'int8 ' if args.int8 else ''}ONNX to {args.out}...", file=sys.stderr)
    options = dict(input_size=shape, dynamic_batch=not args.static_batch, opset=args.opset, exporter=args.exporter)
    if args.int8:
        model = int8_from_args(model, meta, args)
        path, check, _ = export_int8_verified(model, Path(args.out), check_images=check_images_from_args(model, meta, args),
                                              **options)
    else:
        path, check = export_verified(model, Path(args.out), images=check_images_from_args(model, meta, args), **options)
    metadata = read_metadata(path)
    exporter = metadata.get("exporter")
    result = {"onnx": str(path), "bytes": path.stat().st_size, "max_abs_diff": check.max_abs_diff,
              "input_size": metadata["input_size"], "exporter": exporter, "int8": args.int8,
              "check": dataclasses.asdict(check)}
    if args.int8:
        ops = optimized_op_counts(path)
        result["integer_convs"] = ops.get("QLinearConv", 0)
        result["float_convs"] = ops.get("Conv", 0) + ops.get("FusedConv", 0)
    if args.json:
        print(json.dumps(result))
        return 0
    kind = "int8 QDQ" if args.int8 else "fp32"
    print(f"wrote {path} ({kind}, {result['bytes'] / 1e6:.2f} MB, {exporter} exporter, input "
          f"{'x'.join(map(str, result['input_size']))}); ONNX Runtime matches PyTorch: {check.summary()}")
    if args.int8:
        print(f"ONNX Runtime runs {result['integer_convs']} convolutions on integers (QLinearConv), "
              f"{result['float_convs']} in float")
    return 0
