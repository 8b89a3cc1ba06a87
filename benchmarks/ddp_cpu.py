"""Data-parallel training on CPU: 2 processes (torchrun, gloo) against 1, same global batch.

For each seed, trains resnet20 on CIFAR-10 with AGP pruning to 50% sparsity twice: once in one
process with 2 threads, once as `torchrun --nproc_per_node 2` with 1 thread per process (the same
2 cores). Records the final test accuracy of each, the time, and, for the 2-process run, whether
every rank ended with the same pruning masks and the same weights (compared by per-tensor
checksums gathered from each rank). Writes bench_results/ddp_cpu.json.

    python benchmarks/ddp_cpu.py                                   # the recorded run (minutes)
    python benchmarks/ddp_cpu.py --train-limit 512 --test-limit 256 --epochs 1 --seeds 0   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args: argparse.Namespace) -> None:
    """One training (in each process when started by torchrun); rank 0 writes the result JSON."""
    import torch

    from effdl.compress.prune.schedules import AGPCallback
    from effdl.models import create_model
    from effdl.train import Trainer, TrainConfig, distributed
    from effdl.train.run import prepare_data

    config = TrainConfig(model="resnet20", dataset=args.data, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, seed=args.seed, device="cpu", progress=False, bf16=False,
                         train_limit=args.train_limit, test_limit=args.test_limit, threads=args.threads)
    distributed.init_from_env("cpu")
    data, _ = prepare_data(config)
    torch.manual_seed(config.seed)
    model = create_model("resnet20", num_classes=data.num_classes)
    agp = AGPCallback(args.sparsity)
    trainer = Trainer(model, data, config, callbacks=[agp])
    start = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - start
    masks = torch.cat([m.flatten().double() for m in agp.masks.values()])
    local = torch.cat([distributed.parameter_checksums(trainer.model),
                       torch.stack([masks.sum(), (masks * torch.arange(len(masks), dtype=torch.float64)).sum()])])
    gathered = [local.clone() for _ in range(distributed.world_size())]
    if distributed.current() is not None:
        torch.distributed.all_gather(gathered, local)
    if distributed.is_main():
        Path(args.result).write_text(json.dumps({
            "processes": distributed.world_size(), "accuracy": result.accuracy, "correct": result.correct,
            "total": result.total, "time_s": round(seconds, 1), "images_per_s": round(result.images_per_s, 1),
            "sparsity_reached": round(1 - float(masks.mean()), 4),
            "identical_masks_and_weights_across_ranks": all(torch.equal(g, gathered[0]) for g in gathered),
        }))


def run_one(args: argparse.Namespace, processes: int, seed: int, folder: Path) -> dict:
    result = folder / f"p{processes}-s{seed}.json"
    common = [__file__, "--worker", "--seed", str(seed), "--result", str(result), "--data", args.data,
              "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
              "--sparsity", str(args.sparsity), "--threads", str(2 // processes)]
    for flag, value in (("--train-limit", args.train_limit), ("--test-limit", args.test_limit)):
        if value is not None:
            common += [flag, str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": str(2 // processes)}
    if processes == 1:
        command = [sys.executable, *common]
    else:
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        command = [torchrun, "--nproc_per_node", str(processes), "--master_port", "29531", *common]
    print(f"seed {seed}, {processes} process(es)...", flush=True)
    subprocess.run(command, check=True, env=env)
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--train-limit", type=int, default=10000)
    parser.add_argument("--test-limit", type=int, default=None)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from common import write_result  # benchmarks/common.py, beside this script

    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_one(args, processes, seed, Path(tmp)) for seed in args.seeds for processes in (1, 2)]
    by_seed = [{"seed": seed, "one_process": runs[2 * i], "two_processes": runs[2 * i + 1]}
               for i, seed in enumerate(args.seeds)]
    write_result("ddp_cpu", {
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "result", "seed", "threads")},
        "runs": by_seed,
        "accuracy_one_process": [r["one_process"]["accuracy"] for r in by_seed],
        "accuracy_two_processes": [r["two_processes"]["accuracy"] for r in by_seed],
        "identical_across_ranks": all(r["two_processes"]["identical_masks_and_weights_across_ranks"] for r in by_seed),
    })


if __name__ == "__main__":
    main()
