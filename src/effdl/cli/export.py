"""`effdl export CKPT|MODEL --out model.onnx [--int8]`: export to ONNX and verify it against PyTorch.

Any model exports as a float graph, quantized ones included (their fake-quant arithmetic is
written with float ops). `--int8` writes an int8 QDQ graph instead (see effdl.deploy.int8): a
float checkpoint is BatchNorm-folded, quantized and calibrated on training images first; a
checkpoint already quantized with ptq-int8 is exported as it is.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import onnx
from torch import nn

from effdl.cli.common import add_data_args, dataset_from_args, int_list, model_from_ref
from effdl.compress.quantize import calibration_images, is_quantized
from effdl.deploy.int8 import export_int8_onnx, int8_model, optimized_op_counts
from effdl.deploy.onnx import EXPORTERS, check_onnx, export_onnx


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
    images = None
    if not is_quantized(model):
        data = dataset_from_args(args, meta.get("config"))
        images = calibration_images(data, args.calibration_images)
    return int8_model(model.cpu().eval(), images, args.calibration)


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a checkpoint or model to ONNX (fp32 or int8) and verify it",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="checkpoint (.safetensors) or registered model name")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--input-size", default="3,32,32", help="C,H,W of one input (default 3,32,32)")
    p.add_argument("--num-classes", type=int, default=10, help="classes, for a model name (default 10)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size to 1 instead of dynamic")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--exporter", default="auto", choices=["auto", *EXPORTERS],
                   help="torch exporter: auto (dynamo, falling back to torchscript tracing; default)")
    add_int8_args(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    shape = int_list(args.input_size, "--input-size", length=3)
    model, meta = model_from_ref(args.model, num_classes=args.num_classes)
    if args.int8:
        model = int8_from_args(model, meta, args)
        path = export_int8_onnx(model, Path(args.out), input_size=(1, *shape), dynamic_batch=not args.static_batch,
                                opset=args.opset, exporter=args.exporter)
    else:
        path = export_onnx(model, Path(args.out), (1, *shape), dynamic_batch=not args.static_batch,
                           opset=args.opset, exporter=args.exporter)
    max_diff = check_onnx(model, path)
    exporter = {p.key: p.value for p in onnx.load(str(path)).metadata_props}.get("effdl.exporter")
    result = {"onnx": str(path), "bytes": path.stat().st_size, "max_abs_diff": max_diff, "input_size": list(shape),
              "exporter": exporter, "int8": args.int8}
    if args.int8:
        ops = optimized_op_counts(path)
        result["integer_convs"] = ops.get("QLinearConv", 0)
        result["float_convs"] = ops.get("Conv", 0) + ops.get("FusedConv", 0)
    if args.json:
        print(json.dumps(result))
        return 0
    kind = "int8 QDQ" if args.int8 else "fp32"
    print(f"wrote {path} ({kind}, {result['bytes'] / 1e6:.2f} MB, {exporter} exporter); "
          f"ONNX Runtime matches PyTorch, max abs diff {max_diff:.2e}")
    if args.int8:
        print(f"ONNX Runtime runs {result['integer_convs']} convolutions on integers (QLinearConv), "
              f"{result['float_convs']} in float")
    return 0
