"""`effdl export CKPT|MODEL --out model.onnx [--int8]`: export to ONNX and verify it against PyTorch.

Any model exports as a float graph, quantized ones included (their fake-quant arithmetic is
written with float ops). `--int8` writes an int8 QDQ graph instead (see effdl.deploy.int8): a
float checkpoint is BatchNorm-folded, quantized and calibrated on training images first; a
checkpoint already quantized on uniform grids of at most 8 bits (ptq-int8, QAT minmax / lsq / PACT
at 2..8 bits, e.g. 4-bit QAT) is exported as it is, with its own scales; others are refused with
the reason. The input size is the model's own (its training data's),
`--input-size` overrides it. The file is verified before it takes the name `--out` (a rejected file
is deleted): float models to float rounding, quantized ones on training images by top-1 agreement
and error in steps of the output grid (effdl.deploy.onnx.verify_onnx). The work is
effdl.pipelines.export.export_checkpoint; this module only reads the flags.
"""

from __future__ import annotations

import argparse
import json

from effdl.cli.common import add_data_args, checkpoint_or_model, int_list, output_file
from effdl.pipelines.export import CALIBRATION_METHODS, ExportOptions, export_checkpoint


def add_int8_args(parser: argparse.ArgumentParser) -> None:
    """--int8 and the calibration options (shared with `effdl bench`)."""
    parser.add_argument("--int8", action="store_true",
                        help="int8 QDQ ONNX (a float checkpoint is BN-folded, quantized and calibrated first)")
    parser.add_argument("--calibration", default="minmax", choices=CALIBRATION_METHODS,
                        help="activation range calibration for --int8 (default minmax)")
    parser.add_argument("--calibration-images", type=int, default=512,
                        help="training images used to calibrate for --int8 (default 512)")
    add_data_args(parser)


def int8_options_from_args(args: argparse.Namespace) -> dict:
    """The Int8Options fields (int8, calibration, data) the flags of `add_int8_args` set."""
    return dict(int8=args.int8, calibration=args.calibration, calibration_images=args.calibration_images,
                data=args.data, data_root=args.data_root, image_size=args.image_size, resize=args.resize,
                train_limit=args.train_limit, test_limit=args.test_limit)


EXPORTER_NAMES = ("dynamo", "torchscript")


def register(subparsers) -> None:
    # Exporter names are spelled out, not imported from effdl.deploy.onnx (torch, onnx): that import
    # would cost seconds before any argument error (tests/test_cli.py checks they match EXPORTERS).
    p = subparsers.add_parser("export", help="export a checkpoint or model to ONNX (fp32 or int8) and verify it",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=checkpoint_or_model, help="checkpoint (.safetensors) or registered model name")
    p.add_argument("--out", required=True, type=output_file, help="ONNX file to write")
    p.add_argument("--input-size", default=None,
                   help="C,H,W of one input (default: the model's own, from its training data; else 3,32,32)")
    p.add_argument("--num-classes", type=int, default=10, help="classes, for a model name (default 10)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size to 1 instead of dynamic")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--exporter", default="auto", choices=["auto", *EXPORTER_NAMES],
                   help="torch exporter: auto (dynamo, falling back to torchscript tracing; default)")
    add_int8_args(p)
    p.add_argument("--evaluate", action="store_true",
                   help="also measure the file's top-1 in ONNX Runtime on the test split (--test-limit for a subset)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    shape = int_list(args.input_size, "--input-size", length=3) if args.input_size else None
    options = ExportOptions(input_size=list(shape) if shape else None, dynamic_batch=not args.static_batch,
                            opset=args.opset, exporter=args.exporter, evaluate=args.evaluate,
                            **int8_options_from_args(args))
    result = export_checkpoint(args.model, options, args.out, num_classes=args.num_classes)
    if args.json:
        print(json.dumps(result))
        return 0
    from effdl.deploy.onnx import OnnxCheck

    check = OnnxCheck(**result["check"])
    kind = "int8 QDQ" if result["int8"] else f"{result['weights']} weights"  # read from the file
    print(f"wrote {result['onnx']} ({kind}, {result['bytes'] / 1e6:.2f} MB, {result['exporter']} exporter, input "
          f"{'x'.join(map(str, result['input_size']))}); ONNX Runtime matches PyTorch: {check.summary()}")
    if result["int8"]:
        print(f"ONNX Runtime runs {result['integer_convs']} convolutions on integers (QLinearConv), "
              f"{result['float_convs']} in float; {result['integer_adds']} Adds on integers (QLinearAdd), "
              f"{result['float_adds']} in float")
    if "onnx_accuracy" in result:
        print(f"top-1 in ONNX Runtime: {result['onnx_accuracy']:.2%} ({result['onnx_correct']:,} / "
              f"{result['onnx_total']:,} test images)")
    return 0
