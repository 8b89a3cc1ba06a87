"""Factorization on CIFAR-10: the same 0.5x MAC budget by structured pruning, Tucker, CP and both.

From one trained --checkpoint (resnet20 or resnet56), each method reaches at most --target-macs of
its MACs and is fine-tuned for --epochs with the same learning rate, batch size and distillation:
1. structured: L1-filter pruning with the MAC target (effdl prune's bisection; channel counts
   rounded to --prune-round-to when given);
2. tucker: Tucker-2 with a global MAC target (per-layer sensitivity scan on 500 training images,
   greedy allocation as AIMET does, ranks rounded to --round-to; --rule ratio: every layer to the
   same MAC ratio instead);
3. cp: CP the same way;
4. combination: structured pruning to --combo-prune-macs of the MACs, then Tucker of the pruned model
   down to the same overall target; the epochs are split between the two stages (same total);
5. block (not by default): whole residual blocks removed to the MAC target (effdl prune --method block);
6. depthwise (not by default): every kxk convolution but the first -> depthwise + pointwise, fitted
   by least squares on 256 training images' activations. The issue's target for it is separate: a
   trained VGG-16 or resnet18 keeps within 2 points at under 0.2x MACs, e.g.
       python benchmarks/factorize_cifar10.py --checkpoint runs/vgg16/best.safetensors \
           --methods depthwise --first-layer features.0 --epochs 10 --distill 0.7
One table: top-1 (and the drop in points), parameters, MACs, imt2024 score, and single-thread
batch-1 ONNX Runtime latency against the base model (best of alternating --rounds rounds, as
prune_cifar10.py measures it). The issue's target: Tucker or CP at <= 0.5x MACs loses <= 1 point
after fine-tuning, and ONNX Runtime batch-1 latency drops >= 1.3x.

Smoke test on a few hundred images (numbers meaningless, the pipeline exercised):
    python benchmarks/factorize_cifar10.py --checkpoint runs/r20/best.safetensors --epochs 1 \
        --limit-train 256 --limit-test 256 --scan-images 100 --repeats 5 --rounds 1 --rule ratio
Writes bench_results/factorize_cifar10.json (each method as soon as it is measured).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import write_result
from effdl.data import load_dataset
from effdl.pipelines.factorize import FactorizeOptions, factorize_checkpoint
from effdl.pipelines.prune import PruneOptions, prune_checkpoint
from prune_cifar10 import batch1_latency

KEYS = ("accuracy_before", "accuracy_before_finetune", "accuracy", "total", "macs_before", "macs_after",
        "params_before", "params_after", "score_imt2024_before", "score_imt2024_after", "ranks", "skipped",
        "channel_ratio", "blocks_removed", "finetune")


def flat(summary: dict) -> dict:
    """The core fields and the run's own measurements in one view."""
    merged = {**summary, **summary["details"], "accuracy_before": summary["source_accuracy"]}
    return {k: merged[k] for k in KEYS if k in merged}


def fine_tune_settings(args, epochs: int) -> dict:
    """lr, batch size and distillation weight, only for a run that fine-tunes (`epochs` > 0): the
    options refuse fine-tune settings that nothing would use."""
    return {"lr": args.lr, "batch_size": args.batch_size, "distill": args.distill} if epochs else {}


def prune(args, data, source: str, out: Path, target: float, epochs: int, method: str = "l1-filter") -> dict:
    options = PruneOptions(method=method, target_macs=target, round_to=args.prune_round_to if method != "block" else None,
                           epochs=epochs, train_limit=args.limit_train, test_limit=args.limit_test, device=args.device,
                           **fine_tune_settings(args, epochs))
    return flat(prune_checkpoint(source, options, out, data=data))


def factorize(args, data, source: str, out: Path, method: str, target: float | None, epochs: int) -> dict:
    rule = {} if target is None else {"target_macs": target} if args.rule == "target" else {"ratio": target}
    rounding = {"round_to": args.round_to} if target is not None else {}  # depthwise: no rank to round
    scan = {"scan_images": args.scan_images} if "target_macs" in rule else {}  # only a MAC target scans
    options = FactorizeOptions(method=method, exclude=[args.first_layer], epochs=epochs, train_limit=args.limit_train,
                               test_limit=args.limit_test, device=args.device, **fine_tune_settings(args, epochs),
                               **scan, **rounding, **rule)
    return flat(factorize_checkpoint(source, options, out, data=data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="trained CIFAR-10 checkpoint (resnet20/56)")
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--data-root", default=os.environ.get("EFFDL_DATA"))
    parser.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs of every method")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--distill", type=float, default=0.0, metavar="ALPHA",
                        help="fine-tune every method with distillation from the base model")
    parser.add_argument("--target-macs", type=float, default=0.5, help="fraction of the base MACs to keep")
    parser.add_argument("--combo-prune-macs", type=float, default=0.75,
                        help="combination: MAC fraction after its pruning stage (Tucker does the rest)")
    parser.add_argument("--rule", choices=("target", "ratio"), default="target",
                        help="factorization ranks: global MAC target (scan + greedy) or one per-layer ratio")
    parser.add_argument("--round-to", type=int, default=8, help="factorization ranks: multiples of this")
    parser.add_argument("--prune-round-to", type=int, default=None,
                        help="structured pruning: channel counts rounded to multiples of this (default none: with 8, "
                             "resnet20's 16-channel stage allows only 8 or 16 and a 0.5x target lands at 0.25x)")
    parser.add_argument("--first-layer", default="conv1", help="the stem convolution, left whole by every method")
    parser.add_argument("--scan-images", type=int, default=500, help="training images scoring the scan")
    parser.add_argument("--methods", nargs="*", default=["structured", "tucker", "cp", "combination"])
    parser.add_argument("--limit-train", type=int, default=None, help="fine-tune on this many images (smoke tests)")
    parser.add_argument("--limit-test", type=int, default=None, help="evaluate on this many images (smoke tests)")
    parser.add_argument("--repeats", type=int, default=100, help="timed batch-1 calls per latency")
    parser.add_argument("--rounds", type=int, default=30, help="alternating latency rounds")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    data = load_dataset(args.data, root=args.data_root, train_limit=args.limit_train, test_limit=args.limit_test)
    base = Path(args.checkpoint)
    result: dict = {"checkpoint": str(base), "epochs": args.epochs, "lr": args.lr, "distill": args.distill,
                    "target_macs": args.target_macs, "rule": args.rule, "round_to": args.round_to,
                    "prune_round_to": args.prune_round_to, "limit_train": args.limit_train,
                    "limit_test": args.limit_test, "load_before": os.getloadavg()[0], "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for method in args.methods:
            start = time.perf_counter()
            out = workdir / method
            if method == "structured":
                row = prune(args, data, str(base), out, args.target_macs, args.epochs)
            elif method == "block":
                row = prune(args, data, str(base), out, args.target_macs, args.epochs, method="block")
            elif method == "depthwise":
                row = factorize(args, data, str(base), out, "depthwise", None, args.epochs)
            elif method in ("tucker", "cp"):
                row = factorize(args, data, str(base), out, method, args.target_macs, args.epochs)
            elif method == "combination":
                first = args.epochs // 2
                pruned = prune(args, data, str(base), workdir / "combo-prune", args.combo_prune_macs, first)
                target = args.target_macs * pruned["macs_before"] / pruned["macs_after"]
                row = factorize(args, data, str(workdir / "combo-prune" / "best.safetensors"), out, "tucker",
                                min(target, 0.99), args.epochs - first)
                row.update(accuracy_before=pruned["accuracy_before"], macs_before=pruned["macs_before"],
                           params_before=pruned["params_before"], score_imt2024_before=pruned["score_imt2024_before"],
                           prune_stage=pruned)
            else:
                raise SystemExit(f"unknown method {method}; use structured, tucker, cp, combination, block, depthwise")
            row["time_s"] = round(time.perf_counter() - start, 1)
            row["macs_ratio"] = row["macs_after"] / row["macs_before"]
            row["params_ratio"] = row["params_after"] / row["params_before"]
            row["accuracy_drop_points"] = 100 * (row["accuracy_before"] - row["accuracy"])
            row["latency_batch1_1thread"] = batch1_latency(base, out / "best.safetensors", workdir, args.repeats,
                                                           args.rounds)
            ort = row["latency_batch1_1thread"]["onnxruntime_ratio"]
            if method == "depthwise":  # its own target: < 0.2x MACs within 2 points
                row["meets_targets"] = row["macs_ratio"] < 0.2 and row["accuracy_drop_points"] <= 2.0
            else:
                row["meets_targets"] = row["macs_ratio"] <= args.target_macs + 1e-9 and \
                    row["accuracy_drop_points"] <= 1.0 and ort >= 1.3
            result["methods"][method] = row
            write_result("factorize_cifar10", result)
    result["table"] = [
        {"method": name, "accuracy": row["accuracy"], "drop_points": round(row["accuracy_drop_points"], 2),
         "params": row["params_after"], "macs": row["macs_after"], "macs_ratio": round(row["macs_ratio"], 3),
         "imt2024": row.get("score_imt2024_after"),
         "onnxruntime_ms": row["latency_batch1_1thread"]["onnxruntime_after_ms"],
         "onnxruntime_speedup": round(row["latency_batch1_1thread"]["onnxruntime_ratio"], 2)}
        for name, row in result["methods"].items()]
    result["load_after"] = os.getloadavg()[0]
    write_result("factorize_cifar10", result)


if __name__ == "__main__":
    main()
