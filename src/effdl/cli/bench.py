"""`effdl bench CKPT|MODEL [--int8]`: latency and throughput in PyTorch and ONNX Runtime, and sizes on disk.

`--int8` also exports the int8 QDQ ONNX model (calibrating a float checkpoint on training images,
as `effdl export --int8` does), checks it against the PyTorch fake-quant model and times it next
to the fp32 ONNX model, as backend "onnxruntime-int8". The work is
effdl.pipelines.bench.bench_checkpoint; this module only reads the flags and prints its report.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from rich.console import Console
from rich.table import Table

from effdl.cli.common import add_device_arg, checkpoint_or_model, int_list
from effdl.cli.export import add_int8_args, int8_options_from_args
from effdl.pipelines.bench import BenchOptions, bench_checkpoint


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="latency/throughput in PyTorch and ONNX Runtime, sizes on disk")
    p.add_argument("model", type=checkpoint_or_model, help="checkpoint (.safetensors) or registered model name")
    p.add_argument("--batch-sizes", default="1,64", help="comma-separated batch sizes (default 1,64)")
    p.add_argument("--input-size", default=None,
                   help="C,H,W of one input (default: the model's own, from its training data; else 3,32,32)")
    p.add_argument("--num-classes", type=int, default=10, help="classes, for a model name (default 10)")
    p.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True,
                   help="also export to ONNX, check it and time it in ONNX Runtime (default on)")
    p.add_argument("--out", default=None, help="folder to keep the ONNX file in (default: a temporary one)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op CPU threads for PyTorch and ONNX Runtime (default: torch's setting)")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per measurement (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--max-seconds", type=float, default=20.0, help="cap on each timed loop (default 20)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_int8_args(p)
    add_device_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    batch_sizes = int_list(args.batch_sizes, "--batch-sizes")
    shape = int_list(args.input_size, "--input-size", length=3) if args.input_size else None
    options = BenchOptions(batch_sizes=list(batch_sizes), input_size=list(shape) if shape else None, onnx=args.onnx,
                           threads=args.threads, repeats=args.repeats, warmup=args.warmup,
                           max_seconds=args.max_seconds, device=args.device, **int8_options_from_args(args))
    report = bench_checkpoint(args.model, options, args.out, num_classes=args.num_classes)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_bench(report)
    return 0


def print_bench(report: dict[str, Any]) -> None:
    """The human form of `bench_checkpoint`'s report: a latency table, the checks, speedups and sizes."""
    console = Console()
    if not console.is_terminal:  # piped or captured: rich would fall back to 80 columns
        console.width = max(console.width, 140)
    table = Table(title=f"{report['model']}: latency on input {tuple(report['input_shape'])}")
    for column in ("backend", "device", "threads", "batch", "median ms", "p10 ms", "p90 ms", "images/s"):
        table.add_column(column, justify="left" if column in ("backend", "device") else "right")
    for r in report["latency"]:
        table.add_row(r["backend"], r["device"], str(r["threads"]), str(r["batch_size"]), f"{r['median_ms']:.2f}",
                      f"{r['p10_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['throughput']:,.0f}")
    console.print(table)
    int8_report = report["int8"]
    if report["onnx"] is not None and report["onnx"]["max_abs_diff"] is not None:
        console.print(f"ONNX Runtime output matches PyTorch (max abs diff {report['onnx']['max_abs_diff']:.2e})")
    if int8_report is not None:
        console.print(f"int8 ONNX Runtime output matches the PyTorch fake-quant model ({int8_report['check']})")
    for batch, ratio in report["onnx_speedup"].items():
        console.print(f"batch {batch}: ONNX Runtime is {ratio:.2f}x the speed of PyTorch eager")
    for batch, ratio in (int8_report or {}).get("speedup_vs_fp32_onnx", {}).items():
        console.print(f"batch {batch}: int8 ONNX Runtime is {ratio:.2f}x the speed of fp32 ONNX Runtime")
    labels = {"checkpoint_bytes": "checkpoint file", "onnx_bytes": "ONNX file", "int8_onnx_bytes": "int8 ONNX file",
              "counted_bytes": "parameters at their bit-width (counted)"}
    for key, value in report["sizes"].items():
        console.print(f"{labels.get(key, key)}: {value / 1e6:.3f} MB ({value:,} bytes)")
    load = report["load_average"]
    if load is not None and load > (os.cpu_count() or 1):  # BenchResult.machine_busy
        console.print(f"[yellow]note: the machine was busy (load {load:.1f} on {os.cpu_count()} "
                      "cores): timings are unreliable, multi-threaded ones most of all; --threads 1 suffers least")
