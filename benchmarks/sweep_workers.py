"""Sweep throughput: the same 16-trial random sweep with 1 worker, then 2 worker processes (one torch
thread each), on a CIFAR-10 subset; the ratio of wall times (target: <= 0.6), and the study reloads.

    EFFDL_DATA=../shared/data python benchmarks/sweep_workers.py [--trials 16 --train-limit 2000 --epochs 1]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from common import write_result

from effdl.search.sweep import SweepSpec, finish_sweep, run_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--model", default="tiny_cnn")
    parser.add_argument("--train-limit", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--name", default="sweep_workers")
    args = parser.parse_args()
    base = {"model": args.model, "dataset": args.dataset, "epochs": args.epochs, "train_limit": args.train_limit,
            "test_limit": max(64, args.train_limit // 4), "val_size": max(64, args.train_limit // 10),
            "batch_size": 64, "threads": 1}
    out = Path(tempfile.mkdtemp(prefix="effdl-sweep-bench-"))
    times = {}
    try:
        for workers in (1, 2):
            spec = SweepSpec(name=f"w{workers}", out=str(out), base=base, sampler="random", trials=args.trials,
                             params={"lr": "0.01..0.3", "weight_decay": "1e-5..1e-3"})
            start = time.perf_counter()
            result = run_sweep(spec, workers=workers, threads_per_worker=1)
            times[workers] = time.perf_counter() - start
            assert len(result.rows) == args.trials, result.rows
        reloaded = len(finish_sweep(out / "w2").rows)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    write_result(args.name, {"trials": args.trials, "base": base, "time_1_worker_s": round(times[1], 2),
                             "time_2_workers_s": round(times[2], 2), "ratio": round(times[2] / times[1], 3),
                             "target_ratio": 0.6, "reloaded_trials": reloaded})


if __name__ == "__main__":
    main()
