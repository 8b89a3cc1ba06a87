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

The table takes CPU hours, so it can be built over several sittings: --out-dir keeps a ledger
(columns.json) of every column's settings (the training keys, the method, the teacher file's
SHA-256) and result. Run the same command again and a column finished with the same settings is
read from the ledger, one interrupted (Ctrl-C, or a lost machine after at least one epoch) resumes
from its last.safetensors, anything else trains from scratch. --fresh ignores the ledger.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from common import write_result
from effdl.fileio import atomic_write, file_hash
from effdl.pipelines.distill import DistillConfig, distill
from effdl.train import TrainConfig, train
from effdl.train.config import PRESENTATION_KEYS
from effdl.train.run import resume

METHODS = ["kd", "dkd", "kd-std", "fitnets", "at", "overhaul"]


def recipe(args: argparse.Namespace, model: str, epochs: int, seed: int, name: str) -> dict:
    """The training keys every column shares (only the model, seed and name differ)."""
    return {"model": model, "dataset": "cifar10", "epochs": epochs, "batch_size": args.batch_size, "lr": args.lr,
            "schedule": args.schedule, "weight_decay": 5e-4, "seed": seed, "train_limit": args.train_limit,
            "test_limit": args.test_limit, "device": args.device, "bf16": args.bf16, "compile": args.compile,
            "progress": True, "out_dir": args.out_dir, "name": name}  # in a log: one line per epoch


class Ledger:
    """`<out_dir>/columns.json`: name -> {"key": the column's settings, "state": "started" | "done",
    "result": {"accuracy", "images_per_s", "run"}}; each column's run is `<out_dir>/<name>` (see the
    module docstring)."""

    def __init__(self, out_dir: str, fresh: bool) -> None:
        self.path = Path(out_dir) / "columns.json"
        self.columns = {} if fresh or not self.path.is_file() else json.loads(self.path.read_text())

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.columns, indent=2) + "\n"
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))

    def column(self, name: str, key: dict, start, proceed) -> dict:
        """The column's result: from the ledger when it finished with `key` (and its run is still
        there); else `proceed()` (resume) when it started with `key` and left a last.safetensors
        without a summary; else `start()` in an emptied folder."""
        entry, run_dir = self.columns.get(name, {}), self.path.parent / name
        same, finished = entry.get("key") == key, (run_dir / "summary.json").is_file()
        if same and entry.get("state") == "done" and finished:
            print(f"{name}: finished earlier, read from {self.path}", flush=True)
            return entry["result"]
        interrupted = same and entry.get("state") == "started" and (run_dir / "last.safetensors").is_file() \
            and not finished
        if not interrupted:
            # emptied before it is noted as started: an older run left there would otherwise be
            # resumed under these settings by a later sitting
            shutil.rmtree(run_dir, ignore_errors=True)
            self.columns[name] = {"key": key, "state": "started"}
            self._write()
        print(f"{name}: {'resuming ' + str(run_dir) if interrupted else 'training'}", flush=True)
        result = proceed() if interrupted else start()
        self.columns[name] = {"key": key, "state": "done", "result": {
            "accuracy": result.accuracy, "images_per_s": result.images_per_s, "run": str(result.run_dir)}}
        self._write()
        return self.columns[name]["result"]


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
    parser.add_argument("--fresh", action="store_true", help="train every column again (ignore the ledger)")
    args = parser.parse_args()

    pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
    teachers = args.teacher_checkpoint.split(",") if args.teacher_checkpoint else [None] * len(pairs)
    if len(teachers) != len(pairs):
        parser.error("--teacher-checkpoint needs one checkpoint per pair")
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    ledger = Ledger(args.out_dir, args.fresh)

    def column(name: str, key: dict, start) -> dict:
        """One column through the ledger, resumed as a training or a distillation. The key leaves
        out how progress is shown: changing that retrains nothing."""
        key = {**key, "config": {k: v for k, v in key["config"].items() if k not in PRESENTATION_KEYS}}

        def proceed():
            if "method" in key:
                config = recipe(args, key["config"]["model"], key["config"]["epochs"], key["config"]["seed"], name)
                return distill(DistillConfig(**config, teacher=[key["teacher"]], method=key["method"]), resume=True)
            return resume(Path(args.out_dir) / name, callbacks=[])
        return ledger.column(name, key, start, proceed)

    tables = []
    for (teacher_model, student_model), teacher_path in zip(pairs, teachers):
        if teacher_path is None:
            name = f"teacher-{teacher_model}"
            keys = recipe(args, teacher_model, args.teacher_epochs, seeds[0], name)
            print(f"the teacher {teacher_model}, {args.teacher_epochs} epochs", flush=True)
            done = column(name, {"config": keys},
                          lambda: train(TrainConfig(**keys), overwrite=True))
            teacher_path = str(Path(done["run"]) / "best.safetensors")
        teacher_sha = file_hash(teacher_path)
        rows: dict[str, dict] = {}
        for seed in seeds:
            name = f"{student_model}-alone-s{seed}"
            keys = recipe(args, student_model, args.epochs, seed, name)
            alone = column(name, {"config": keys},
                           lambda: train(TrainConfig(**keys), overwrite=True))
            rows.setdefault("student alone", {"runs": []})["runs"].append({"seed": seed, **alone})
            for method in methods:
                name = f"{teacher_model}-{student_model}-{method}-s{seed}"  # two teachers may share a student
                keys = recipe(args, student_model, args.epochs, seed, name)
                key = {"config": keys, "teacher": teacher_path, "teacher_sha256": teacher_sha, "method": method}
                done = column(name, key, lambda: distill(
                    DistillConfig(**keys, teacher=[teacher_path], method=method), overwrite=True))
                summary = json.loads((Path(done["run"]) / "summary.json").read_text())
                if method == methods[0]:  # every distillation run measures the same teacher
                    rows.setdefault("teacher", {"runs": []})["runs"].append(
                        {"seed": seed, "accuracy": summary["teacher_accuracy"]})
                rows.setdefault(method, {"runs": []})["runs"].append(
                    {"seed": seed, **done,
                     "slowdown_vs_alone": round(alone["images_per_s"] / max(done["images_per_s"], 1e-9), 3)})
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
    try:
        main()
    except KeyboardInterrupt as exc:  # effdl.errors.Interrupted once training started, says what it saved
        raise SystemExit(f"{str(exc) or 'interrupted'}\nthe same command continues the table (columns.json in "
                         "--out-dir)") from None
