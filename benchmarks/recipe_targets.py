"""A recipe end to end on the CIFAR-10 copy, and its targets judged against its starting point.

Runs a recipe with the recipe runner (resumable: a second call skips the finished stages), then
reads the runner's report, where the `from:` checkpoint and every stage were measured the same way
in the same run: full-test-split accuracy, imt2024 score, MACs, batch-1 ONNX Runtime latency of
the graph as it deploys (1 thread). For each branch's last checkpoint it records the accuracy drop
(points), the score ratio and the latency speed-up against the start, and checks the given targets.
The report times each graph once, one after the other, and a shared machine's load can change in
between (the same int8 graph read 0.209 and 0.288 ms in two runs minutes apart); so for the speed-up
target the start's fp32 graph and the branch's exported graph (its export stage's file) are timed
again in alternating rounds (--rounds), and the target is judged on the median of the per-round
ratios (prune_cifar10.py measures its latencies the same way).

    EFFDL_DATA=../shared/data python benchmarks/recipe_targets.py benchmarks/recipes/long-project-cpu.yaml \\
        --from runs/base/best.safetensors --max-drop 1.5 --max-score-ratio 0.08
    EFFDL_DATA=../shared/data python benchmarks/recipe_targets.py benchmarks/recipes/cpu-deployment-cpu.yaml \\
        --from runs/base/best.safetensors --max-drop 1.0 --min-speedup 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import write_result
from effdl.recipes import load_recipe, run_recipe
from prune_cifar10 import alternate, paired_ratio


def interleaved_speedup(start_checkpoint: str, final_onnx: str, rounds: int, repeats: int) -> dict:
    """Batch-1, 1-thread ONNX Runtime latency (ms) of the start checkpoint's fp32 graph and of
    `final_onnx`, timed in alternating rounds: best round of each, and the median per-round ratio."""
    from effdl.checkpoint import load_model
    from effdl.deploy.onnx import export_onnx
    from effdl.measure.latency import onnx_latency

    with tempfile.TemporaryDirectory(prefix="effdl-start-") as tmp:
        start_onnx = export_onnx(load_model(start_checkpoint)[0].eval(), Path(tmp) / "start.onnx")
        medians = alternate({
            graph: lambda path=path: onnx_latency(path, 1, threads=1, repeats=repeats, warmup=20).median_ms
            for graph, path in (("start_ms", start_onnx), ("final_ms", final_onnx))
        }, rounds)
    return {"start_ms": min(medians["start_ms"]), "final_ms": min(medians["final_ms"]),
            "ratio_of_best": min(medians["start_ms"]) / min(medians["final_ms"]),
            "ratio_paired_median": paired_ratio(medians["start_ms"], medians["final_ms"]),
            "rounds": rounds, "repeats": repeats, "round_medians_ms": medians}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="recipe file or shipped recipe name")
    parser.add_argument("--from", dest="source", required=True, help="the trained checkpoint the recipe starts from")
    parser.add_argument("--out", default="runs", help="parent folder of the recipe's folder")
    parser.add_argument("--max-drop", type=float, default=None, help="target: accuracy drop in points at most")
    parser.add_argument("--max-score-ratio", type=float, default=None, help="target: imt2024 final / start at most")
    parser.add_argument("--min-speedup", type=float, default=None, help="target: ORT batch-1 latency start / final")
    parser.add_argument("--rounds", type=int, default=21, help="alternating latency rounds for the speed-up target")
    parser.add_argument("--repeats", type=int, default=300, help="timed batch-1 calls per round and graph")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe)
    recipe.source, recipe.out = args.source, args.out
    began = time.time()
    outcome = run_recipe(recipe)
    start = outcome.report["start"]
    if start is None:
        raise SystemExit(f"{args.source} is not a run's best.safetensors next to its summary.json")
    rows = {row["name"]: row for row in outcome.report["rows"]}
    branches = []
    for branch in outcome.plan.branches:
        final = next(rows[s.folder] for s in reversed(branch) if s.folder in rows)
        drop = 100 * (start["accuracy"] - final["accuracy"])
        score_ratio = final["imt2024_score"] / start["imt2024_score"]
        speedup = (start["latency_ms"] / final["latency_ms"]
                   if start.get("latency_ms") and final.get("latency_ms") else None)
        exported = [outcome.results[s.folder]["onnx"] for s in branch
                    if not s.kind.makes_checkpoint and s.folder in outcome.results and "onnx" in outcome.results[s.folder]]
        interleaved = (interleaved_speedup(args.source, exported[-1], args.rounds, args.repeats)
                       if args.min_speedup is not None and exported else None)
        if interleaved is not None:  # the report's single reading stays in the record; the target uses these
            speedup = interleaved["ratio_paired_median"]
        checks = {
            "drop": None if args.max_drop is None else drop <= args.max_drop,
            "score_ratio": None if args.max_score_ratio is None else score_ratio <= args.max_score_ratio,
            "speedup": None if args.min_speedup is None or speedup is None else speedup >= args.min_speedup,
        }
        branches.append({
            "choices": dict(branch[-1].choices), "final_stage": final["name"],
            "stages": [{k: rows[s.folder].get(k) for k in ("name", "accuracy", "imt2024_score", "macs", "params",
                                                          "size_bytes", "latency_ms", "latency_graph")}
                       for s in branch if s.folder in rows],
            "exports": {s.folder: outcome.results[s.folder] for s in branch
                        if not s.kind.makes_checkpoint and s.folder in outcome.results},
            "drop_points": round(drop, 2), "score_ratio": round(score_ratio, 4),
            "speedup": round(speedup, 2) if speedup else None, "latency_interleaved": interleaved,
            "targets_met": checks,
        })
        print(f"{final['name']}: {final['accuracy']:.2%} (start {start['accuracy']:.2%}, drop {drop:.2f} pt), "
              f"imt2024 {final['imt2024_score']:.4f} ({score_ratio:.3f}x start), ORT batch 1 "
              f"{final.get('latency_ms') or float('nan'):.3f} ms ({speedup or float('nan'):.2f}x faster); "
              f"targets {checks}", file=sys.stderr)
    write_result(f"recipe_{recipe.name}", {
        "command": "python benchmarks/recipe_targets.py " + " ".join(sys.argv[1:]),
        "recipe": recipe.name, "source": args.source,
        "start": {k: start.get(k) for k in ("name", "accuracy", "imt2024_score", "macs", "params", "size_bytes",
                                             "latency_ms", "latency_graph")},
        "branches": branches, "skipped_stages": outcome.skipped, "wall_time_min": round((time.time() - began) / 60, 1),
    })


if __name__ == "__main__":
    main()
