"""`effdl export CKPT|MODEL --out model.onnx`: export to ONNX and verify it against PyTorch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import onnx

from effdl.cli.common import int_list, model_from_ref
from effdl.deploy.onnx import EXPORTERS, check_onnx, export_onnx


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a checkpoint or model to ONNX and verify it")
    p.add_argument("model", help="checkpoint (.safetensors) or registered model name")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--input-size", default="3,32,32", help="C,H,W of one input (default 3,32,32)")
    p.add_argument("--num-classes", type=int, default=10, help="classes, for a model name (default 10)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size to 1 instead of dynamic")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--exporter", default="auto", choices=["auto", *EXPORTERS],
                   help="torch exporter: auto (dynamo, falling back to torchscript tracing; default)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    shape = int_list(args.input_size, "--input-size", length=3)
    model, _ = model_from_ref(args.model, num_classes=args.num_classes)
    path = export_onnx(model, Path(args.out), (1, *shape), dynamic_batch=not args.static_batch, opset=args.opset,
                       exporter=args.exporter)
    max_diff = check_onnx(model, path)
    exporter = {p.key: p.value for p in onnx.load(str(path)).metadata_props}.get("effdl.exporter")
    result = {"onnx": str(path), "bytes": path.stat().st_size, "max_abs_diff": max_diff, "input_size": list(shape),
              "exporter": exporter}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"wrote {path} ({result['bytes'] / 1e6:.2f} MB, {exporter} exporter); "
              f"ONNX Runtime matches PyTorch, max abs diff {max_diff:.2e}")
    return 0
