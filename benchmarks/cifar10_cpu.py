"""resnet20 trained on CIFAR-10 on this CPU within a time budget: accuracy reached, time per epoch.

The recipe is effdl's defaults plus a one-cycle schedule sized to the budget: SGD Nesterov,
batch 256, peak lr 0.2, weight decay 5e-4 (not on BN/bias), label smoothing 0.1, crop+flip,
bf16 autocast + channels_last where the CPU has AMX. The reference point in the same run is the
untrained model's accuracy (chance), so the JSON also records the gain.

    EFFDL_DATA=../shared/data python benchmarks/cifar10_cpu.py --epochs 25
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from common import write_result
from effdl.data import BatchLoader, load_dataset
from effdl.measure import evaluate
from effdl.models import create_model
from effdl.train import Trainer, make_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--data-root", default=os.environ.get("EFFDL_DATA", "../shared/data"))
    parser.add_argument("--out", default="runs/bench-cifar10-cpu")
    parser.add_argument("--budget-min", type=float, default=30.0)
    args = parser.parse_args()

    data = load_dataset("cifar10", root=args.data_root)
    config = make_config({
        "dataset": "cifar10", "data_root": args.data_root, "model": args.model, "epochs": args.epochs,
        "batch_size": 256, "lr": 0.2, "weight_decay": 5e-4, "label_smoothing": 0.1, "schedule": "onecycle",
        "name": Path(args.out).name, "out_dir": str(Path(args.out).parent), "progress": False,
    })
    model = create_model(args.model, num_classes=data.num_classes)
    untrained = evaluate(model, BatchLoader.for_split(data, "test", batch_size=1000))
    run_dir = Path(args.out)
    if (run_dir / "last.safetensors").exists():
        raise SystemExit(f"{run_dir} exists; remove it first")
    result = Trainer(model, data, config, run_dir=run_dir).fit()
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epoch_times = [e["train_time_s"] for e in epochs]
    write_result("cifar10_cpu", {
        "command": f"python benchmarks/cifar10_cpu.py --epochs {args.epochs} --model {args.model}",
        "model": args.model, "epochs": args.epochs, "test_accuracy": result.accuracy,
        "correct": result.correct, "total": result.total, "untrained_accuracy": untrained.top1,
        "total_time_min": round(result.time_s / 60, 2), "within_budget": result.time_s / 60 <= args.budget_min,
        "mean_train_epoch_s": round(sum(epoch_times) / len(epoch_times), 1),
        "images_per_s": round(result.images_per_s, 1), "run_dir": str(run_dir),
        "accuracy_per_epoch": [round(e["eval_acc"], 4) for e in epochs],
    })


if __name__ == "__main__":
    main()
