"""`effdl bench CKPT|MODEL [--int8]`: latency and throughput in PyTorch and ONNX Runtime, and sizes on disk.

`--int8` also exports the int8 QDQ ONNX model (calibrating a float checkpoint on training images,
as `effdl export --int8` does), checks it against the PyTorch fake-quant model and times it next
to the fp32 ONNX model, as backend "onnxruntime-int8".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from effdl.cli.common import add_device_arg, checkpoint_or_model, int_list, model_from_ref
from effdl.cli.export import add_int8_args, check_images_from_args, int8_from_args

if TYPE_CHECKING:  # torch, onnx & co. are imported where used, so that `effdl --help` stays fast
    from effdl.deploy.bench import BenchResult

INT8_BACKEND = "onnxruntime-int8"


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
    from effdl.deploy.bench import benchmark_model
    from effdl.device import resolve_device
    from effdl.measure.counting import profile
    from effdl.models.registry import model_input_size

    batch_sizes = int_list(args.batch_sizes, "--batch-sizes")
    shape = int_list(args.input_size, "--input-size", length=3) if args.input_size else None
    # auto: the CPU, and the GPU as well when there is one; a named device: that device only.
    devices = [resolve_device(args.device)]
    if args.device == "auto" and devices[0].type != "cpu":
        devices.insert(0, resolve_device("cpu"))
    model, meta = model_from_ref(args.model, num_classes=args.num_classes)
    shape = shape or model_input_size(model)  # latency at the size the model was trained for
    # Calibrate before timing anything: a missing dataset should fail fast.
    int8 = int8_from_args(model, meta, args) if args.int8 else None
    check_images = check_images_from_args(int8 if int8 is not None else model, meta, args)
    counted_bytes = profile(model, (1, *shape)).size_bytes
    result = benchmark_model(
        model, shape, batch_sizes, onnx=args.onnx, onnx_dir=args.out, devices=devices, threads=args.threads,
        warmup=args.warmup, repeats=args.repeats, max_seconds=args.max_seconds,
        check_images=check_images,
    )
    if Path(args.model).is_file():
        result.sizes["checkpoint_bytes"] = Path(args.model).stat().st_size
    result.sizes["counted_bytes"] = counted_bytes
    if result.onnx_bytes is not None:
        result.sizes["onnx_bytes"] = result.onnx_bytes
    int8_report = time_int8(int8, result, shape, batch_sizes, args, check_images) if int8 is not None else None
    if args.json:
        print(json.dumps({"model": args.model, **result.to_dict(), "int8": int8_report}, indent=2))
    else:
        print_bench(args.model, result, int8_report)
    return 0


def time_int8(model, result: BenchResult, shape: tuple[int, ...], batch_sizes: tuple[int, ...],
              args: argparse.Namespace, check_images=None) -> dict[str, Any]:
    """Export `model` (int8 fake-quant) to int8 ONNX, check it on `check_images` (None: random
    inputs), and add its latencies to `result`."""
    from effdl.deploy.int8 import export_int8_verified
    from effdl.deploy.onnx import ort_session
    from effdl.measure.latency import onnx_latency

    with tempfile.TemporaryDirectory(prefix="effdl-bench-") as tmp:
        model = model.cpu()  # the PyTorch timings may have moved it to a GPU
        path, check, _ = export_int8_verified(model, Path(args.out or tmp) / "model-int8.onnx", input_size=shape,
                                              check_images=check_images)
        max_diff = check.max_abs_diff
        session = ort_session(path, threads=args.threads)
        for b in batch_sizes:
            timed = onnx_latency(path, b, session=session, warmup=args.warmup, repeats=args.repeats,
                                 max_seconds=args.max_seconds)
            result.latencies.append(dataclasses.replace(timed, backend=INT8_BACKEND))
        result.sizes["int8_onnx_bytes"] = path.stat().st_size
    return {"max_abs_diff": max_diff, "check": check.summary(), "bytes": result.sizes["int8_onnx_bytes"],
            "speedup_vs_fp32_onnx": {str(b): r for b, r in int8_speedups(result).items()}}


def int8_speedups(result: BenchResult) -> dict[int, float]:
    """Per batch size: fp32 ONNX Runtime median latency / int8 ONNX Runtime median latency."""
    ratios = {}
    for r in result.latencies:
        fp32 = result.latency("onnxruntime", r.batch_size) if r.backend == INT8_BACKEND else None
        if fp32 is not None:
            ratios[r.batch_size] = fp32.median_ms / r.median_ms
    return ratios


def print_bench(name: str, result: BenchResult, int8_report: dict[str, Any] | None = None) -> None:
    console = Console()
    if not console.is_terminal:  # piped or captured: rich would fall back to 80 columns
        console.width = max(console.width, 140)
    table = Table(title=f"{name}: latency on input {tuple(result.input_shape)}")
    for column in ("backend", "device", "threads", "batch", "median ms", "p10 ms", "p90 ms", "images/s"):
        table.add_column(column, justify="left" if column in ("backend", "device") else "right")
    for r in result.latencies:
        table.add_row(r.backend, r.device, str(r.threads), str(r.batch_size), f"{r.median_ms:.2f}",
                      f"{r.p10_ms:.2f}", f"{r.p90_ms:.2f}", f"{r.throughput:,.0f}")
    console.print(table)
    if result.onnx_max_abs_diff is not None:
        console.print(f"ONNX Runtime output matches PyTorch (max abs diff {result.onnx_max_abs_diff:.2e})")
    if int8_report is not None:
        console.print(f"int8 ONNX Runtime output matches the PyTorch fake-quant model ({int8_report['check']})")
    for batch, ratio in result.onnx_speedups().items():
        console.print(f"batch {batch}: ONNX Runtime is {ratio:.2f}x the speed of PyTorch eager")
    for batch, ratio in int8_speedups(result).items():
        console.print(f"batch {batch}: int8 ONNX Runtime is {ratio:.2f}x the speed of fp32 ONNX Runtime")
    labels = {"checkpoint_bytes": "checkpoint file", "onnx_bytes": "ONNX file", "int8_onnx_bytes": "int8 ONNX file",
              "counted_bytes": "parameters at their bit-width (counted)"}
    for key, value in result.sizes.items():
        console.print(f"{labels.get(key, key)}: {value / 1e6:.3f} MB ({value:,} bytes)")
    if result.machine_busy:
        console.print(f"[yellow]note: the machine was busy (load {result.load_average:.1f} on {os.cpu_count()} "
                      "cores): timings are unreliable, multi-threaded ones most of all; --threads 1 suffers least")
