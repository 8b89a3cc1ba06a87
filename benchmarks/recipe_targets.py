"""A recipe end to end on the CIFAR-10 copy, and its targets judged against its starting point.

Runs a recipe with the recipe runner (resumable: a second call skips the finished stages), then
reads the runner's report, where the `from:` checkpoint and every stage were measured the same way
in the same run: full-test-split accuracy, imt2024 score, MACs, batch-1 ONNX Runtime latency of
the graph as it deploys (1 thread). For each branch's last checkpoint it records the accuracy drop
(points), the score ratio and the latency speed-up against the start, and checks the given targets.

    EFFDL_DATA=../shared/data python benchmarks/recipe_targets.py benchmarks/recipes/long-project-cpu.yaml \\
        --from runs/base/best.safetensors --max-drop 1.5 --max-score-ratio 0.08
    EFFDL_DATA=../shared/data python benchmarks/recipe_targets.py benchmarks/recipes/cpu-deployment-cpu.yaml \\
        --from runs/base/best.safetensors --max-drop 1.0 --min-speedup 3
"""

from __future__ import annotations

import argparse
import sys
import time

from common import write_result
from effdl.recipes import load_recipe, run_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="recipe file or shipped recipe name")
    parser.add_argument("--from", dest="source", required=True, help="the trained checkpoint the recipe starts from")
    parser.add_argument("--out", default="runs", help="parent folder of the recipe's folder")
    parser.add_argument("--max-drop", type=float, default=None, help="target: accuracy drop in points at most")
    parser.add_argument("--max-score-ratio", type=float, default=None, help="target: imt2024 final / start at most")
    parser.add_argument("--min-speedup", type=float, default=None, help="target: ORT batch-1 latency start / final")
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
            "speedup": round(speedup, 2) if speedup else None, "targets_met": checks,
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
