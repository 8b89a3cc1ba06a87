"""`effdl search SPACE.yaml`: architecture search under constraints (effdl.search.arch).

    effdl search space.yaml --objective accuracy,imt2024 --max-macs 25e6 --trials 40 --strategy nsga2 \\
        --set dataset=cifar10 --proxy epochs=3 --proxy train_limit=10000 --proxy val_size=2000 \\
        --full epochs=30 --full-top 3
    effdl search mcu.yaml --max-peak-kb 64 --bits 8 --strategy evolution --trials 60

The space file lists per-stage choices of a ResNet-like or MobileNetV2/V3-like family (see
`effdl.search.arch`). Constraints (--max-macs, --max-params, --max-score with --scorer and --bits,
--max-peak-kb at --bits, --max-latency-ms on ONNX Runtime batch 1) are checked with the counting
engine before any training: a candidate that breaks one is recorded as infeasible and never
trained. Candidates train briefly (--proxy keys); the front is then trained fully (--full keys) and
the proxy's rank correlation with full training is reported. Written to runs/NAME/: trials.csv,
pareto.png (every candidate, constraint lines), search.json, recipes/arch-NNNN.yaml (`effdl run`).
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("search", help="architecture search under MAC, score, memory or latency constraints",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("space", help="search space YAML file")
    p.add_argument("--objective", default="accuracy", help="accuracy[,COST]: COST one of macs, params, imt2024, "
                   "micronet, peak_kb, latency_ms (default: accuracy)")
    p.add_argument("--strategy", choices=("random", "evolution", "nsga2"), default="random",
                   help="random, evolution (regularized, aging) or nsga2 (multi-objective)")
    p.add_argument("--trials", type=int, default=20, help="candidates sampled (default 20)")
    p.add_argument("--max-macs", type=float, default=None, help="largest multiply-accumulates per image allowed")
    p.add_argument("--max-params", type=float, default=None, help="largest parameter count allowed")
    p.add_argument("--max-score", type=float, default=None, help="limit on --scorer's score at --bits")
    p.add_argument("--scorer", default="imt2024", help="scorer of --max-score (imt2024, micronet...)")
    p.add_argument("--bits", type=int, default=32, help="bits assumed for weights and activations (score, peak)")
    p.add_argument("--max-peak-kb", type=float, default=None, help="peak activation memory at --bits, KiB")
    p.add_argument("--max-latency-ms", type=float, default=None, help="ONNX Runtime batch-1 latency, one thread")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="training key for every training (dataset, batch_size...)")
    p.add_argument("--proxy", action="append", default=[], metavar="KEY=VALUE",
                   help="training key of the search's short trainings (default epochs=2)")
    p.add_argument("--full", action="append", default=[], metavar="KEY=VALUE",
                   help="training key of the front's full trainings (default epochs=30)")
    p.add_argument("--full-top", type=int, default=3, help="front members trained fully (0: none)")
    p.add_argument("--population", type=int, default=8, help="evolution / NSGA-II population")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler and of the evolution")
    p.add_argument("--name", default=None, help="the search's folder name (default: the space file's name)")
    p.add_argument("--out", default="runs", metavar="DIR", help="parent folder of the search's folder (default: runs)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from effdl.search.arch import Constraints, SearchSpec, load_space, run_search
    from effdl.search.space import parse_assignment

    def keys(items: list[str], default: dict) -> dict:
        values = dict(default)
        for text in items:
            key, value = parse_assignment(text)
            values[key] = value
        return values

    load_space(args.space)  # one clear line for a bad file before anything else
    import yaml

    spec = SearchSpec(
        name=args.name or Path(args.space).stem, space=yaml.safe_load(Path(args.space).read_text()),
        objectives=[o.strip() for o in args.objective.split(",") if o.strip()],
        constraints=Constraints(max_macs=args.max_macs, max_params=args.max_params, max_score=args.max_score,
                                scorer=args.scorer, bits=args.bits, max_peak_kb=args.max_peak_kb,
                                max_latency_ms=args.max_latency_ms),
        strategy=args.strategy, trials=args.trials, base=keys(args.set, {}), proxy=keys(args.proxy, {"epochs": 2}),
        full=keys(args.full, {"epochs": 30}), full_top=args.full_top, population=args.population, seed=args.seed,
        out=args.out)
    result = run_search(spec)
    print(f"search {result.directory}: {len(result.rows)} candidates, {result.trainings} proxy trainings, "
          f"{sum(r['state'] == 'infeasible' for r in result.rows)} infeasible (never trained)")
    for arch in result.front:
        full = f", full {arch['full_accuracy']:.4f}" if arch["full_accuracy"] is not None else ""
        costs = ", ".join(f"{k} {v:.4g}" for k, v in arch["metrics"].items())
        print(f"  #{arch['number']}: proxy {arch['proxy_accuracy']:.4f}{full}; {costs}; recipe {arch['recipe']}")
    corr = result.correlation
    if corr.get("kendall_tau") is not None:
        print(f"proxy vs full: Kendall tau {corr['kendall_tau']:.3f}, Spearman rho {corr['spearman_rho']:.3f} "
              f"over {corr['pairs']} architectures")
    else:
        print(f"proxy vs full rank correlation: not measured ({corr.get('note')})")
    print(f"pareto plot: {result.files['pareto']}")
    return 0
