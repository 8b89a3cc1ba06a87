"""Latency of PyTorch eager against ONNX Runtime on this CPU, for the CIFAR ResNet18 and ResNet20.

For each model and batch size (1 and 64) the model is exported to ONNX, the ONNX output is checked
against PyTorch, then both are timed in the same run with the same number of intra-op threads:
median of --repeats timed calls after --warmup untimed ones (each loop capped at --max-seconds).
The ratio is PyTorch median / ONNX Runtime median (above 1: ONNX Runtime is faster). The load
average before and after is recorded, since other processes on a shared machine slow both sides.

Threads default to 1: on a busy machine a multi-threaded PyTorch forward waits for every one of
its threads to be scheduled at each operator, which measured resnet20 batch-1 at 480 ms with two
threads against 5.4 ms with one, on the same 2-core machine under load. One thread per backend
keeps the comparison about the runtimes rather than the scheduler.

    python benchmarks/latency.py --repeats 20
"""

from __future__ import annotations

import argparse
import os

from common import write_result
from effdl.deploy.bench import benchmark_model
from effdl.models import create_model

MODELS = ["resnet20", "resnet18"]
BATCH_SIZES = (1, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for both backends (default 1)")
    parser.add_argument("--max-seconds", type=float, default=30.0)
    args = parser.parse_args()
    load_before = os.getloadavg()
    cases = {}
    for name in MODELS:
        result = benchmark_model(
            create_model(name), (3, 32, 32), BATCH_SIZES, threads=args.threads, warmup=args.warmup,
            repeats=args.repeats, max_seconds=args.max_seconds,
        )
        cases[name] = {
            "onnx_max_abs_diff": result.onnx_max_abs_diff,
            "onnx_bytes": result.onnx_bytes,
            "latency": [r.to_dict() for r in result.latencies],
            "onnx_speedup": {f"batch{b}": round(v, 3) for b, v in result.onnx_speedups().items()},
        }
    write_result("latency", {"command": "python benchmarks/latency.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "load_average_before": load_before, "load_average_after": os.getloadavg(), "cases": cases})


if __name__ == "__main__":
    main()
