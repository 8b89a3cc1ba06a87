"""Distillation on CIFAR-10: the literature's table (teacher, student alone, KD, DKD, KD-std,
FitNets, AT, overhaul) for one same-family pair and one cross-family pair.

For each pair TEACHER->STUDENT (default resnet56->resnet20 and resnet56->mobilenet_v2):
1. the teacher: --teacher-checkpoint CKPT (one per pair, in order) or trained here with
   --teacher-epochs (same recipe);
2. the student alone (`effdl train`) and the student with each method (`effdl distill`), every
   column with the same epochs, recipe and seed; each seed in --seeds is a separate run and the
   table holds their mean (and each value).
Every accuracy is the full-test-split top-1 of the LAST epoch (no validation split, so
best.safetensors is the last epoch's weights), unless --test-limit is given. The cost of
distillation is each run's training images/s next to the student alone's (same machine, same run).
The targets of the issue: KD >= student alone + 0.5 point; the best method >= KD + 0.3 point.

Smoke test (numbers meaningless; the pipeline exercised):
    python benchmarks/distill_cifar10.py --epochs 1 --teacher-epochs 1 --train-limit 256 --test-limit 256 \
        --pairs resnet20:resnet20 --methods kd,at
Writes bench_results/distill_cifar10.json (runs under --out-dir, default runs/bench-distill).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import EpochLog, write_result
from effdl.pipelines.distill import DistillConfig, distill
from effdl.train import TrainConfig, train

METHODS = ["kd", "dkd", "kd-std", "fitnets", "at", "overhaul"]


def recipe(args: argparse.Namespace, model: str, epochs: int, seed: int, name: str) -> dict:
    """The training keys every column shares (only the model, seed and name differ)."""
    return {"model": model, "dataset": "cifar10", "epochs": epochs, "batch_size": args.batch_size, "lr": args.lr,
            "schedule": args.schedule, "weight_decay": 5e-4, "seed": seed, "train_limit": args.train_limit,
            "test_limit": args.test_limit, "device": args.device, "bf16": args.bf16, "compile": args.compile,
            "progress": False, "out_dir": args.out_dir, "name": name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="resnet56:resnet20,resnet56:mobilenet_v2",
                        help="TEACHER:STUDENT model pairs, comma-separated")
    parser.add_argument("--teacher-checkpoint", default=None,
                        help="teacher checkpoints, comma-separated, one per pair (default: train them)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--epochs", type=int, default=15, help="epochs of every student column")
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--seeds", default="0", help="comma-separated; the table is their mean")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--schedule", default="onecycle")
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bf16", action="store_true", default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out-dir", default="runs/bench-distill")
    args = parser.parse_args()

    pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
    teachers = args.teacher_checkpoint.split(",") if args.teacher_checkpoint else [None] * len(pairs)
    if len(teachers) != len(pairs):
        parser.error("--teacher-checkpoint needs one checkpoint per pair")
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    tables = []
    for (teacher_model, student_model), teacher_path in zip(pairs, teachers):
        if teacher_path is None:
            print(f"training the teacher {teacher_model} for {args.teacher_epochs} epochs", flush=True)
            name = f"teacher-{teacher_model}"
            result = train(TrainConfig(**recipe(args, teacher_model, args.teacher_epochs, seeds[0], name)),
                           callbacks=[EpochLog()], overwrite=True)
            teacher_path = str(Path(result.run_dir) / "best.safetensors")
        rows: dict[str, dict] = {}
        for seed in seeds:
            name = f"{student_model}-alone-s{seed}"
            print(f"{name}", flush=True)
            alone = train(TrainConfig(**recipe(args, student_model, args.epochs, seed, name)),
                          callbacks=[EpochLog()], overwrite=True)
            rows.setdefault("student alone", {"runs": []})["runs"].append(
                {"seed": seed, "accuracy": alone.accuracy, "images_per_s": alone.images_per_s, "run": alone.run_dir})
            for method in methods:
                name = f"{student_model}-{method}-s{seed}"
                print(f"{name} from {teacher_path}", flush=True)
                config = DistillConfig(**recipe(args, student_model, args.epochs, seed, name),
                                       teacher=[teacher_path], method=method)
                result = distill(config, overwrite=True)
                summary = Path(result.run_dir) / "summary.json"
                teacher_accuracy = json.loads(summary.read_text())["teacher_accuracy"]
                rows.setdefault("teacher", {"runs": []})["runs"].append({"seed": seed, "accuracy": teacher_accuracy})
                rows.setdefault(method, {"runs": []})["runs"].append(
                    {"seed": seed, "accuracy": result.accuracy, "images_per_s": result.images_per_s,
                     "slowdown_vs_alone": round(alone.images_per_s / max(result.images_per_s, 1e-9), 3),
                     "run": result.run_dir})
        for row in rows.values():
            accuracies = [r["accuracy"] for r in row["runs"]]
            row["mean_accuracy"] = statistics.fmean(accuracies)
        alone_mean = rows["student alone"]["mean_accuracy"]
        kd_mean = rows.get("kd", {}).get("mean_accuracy")
        best = max((m for m in methods if m in rows), key=lambda m: rows[m]["mean_accuracy"], default=None)
        tables.append({
            "teacher": teacher_model, "student": student_model, "teacher_checkpoint": teacher_path, "rows": rows,
            "kd_minus_alone_points": None if kd_mean is None else round(100 * (kd_mean - alone_mean), 2),
            "best_method": best,
            "best_minus_kd_points": None if kd_mean is None or best is None
            else round(100 * (rows[best]["mean_accuracy"] - kd_mean), 2),
        })
        print(f"{teacher_model} -> {student_model}: " + ", ".join(
            f"{k} {v['mean_accuracy']:.4f}" for k, v in rows.items()), flush=True)
    write_result("distill_cifar10", {
        "epochs": args.epochs, "teacher_epochs": args.teacher_epochs, "seeds": seeds, "batch_size": args.batch_size,
        "lr": args.lr, "schedule": args.schedule, "train_limit": args.train_limit, "test_limit": args.test_limit,
        "accuracy": "last epoch, " + ("full test split" if args.test_limit is None else f"{args.test_limit} test images"),
        "tables": tables,
    })


if __name__ == "__main__":
    main()
