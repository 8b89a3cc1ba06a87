"""`effdl sweep`: a hyper-parameter sweep on optuna, each trial a normal run in the study's folder.

    effdl sweep --config base.yaml --param lr=1e-3..3e-1 --param weight_decay=1e-5..1e-3 \\
        --param batch_size=[64,128,256] --set epochs=10 --set val_size=5000 --trials 24 --pruner median
    effdl sweep --recipe my.yaml --param train.lr=[0.05,0.1] --param 2.sparsity=[0.3,0.5] --sampler grid
    effdl sweep SWEEP.yaml --workers 2             # a sweep file: name, base, params, sampler, trials...
    effdl sweep --resume runs/NAME                 # join a study (here, or on another machine sharing --storage)

Values: a YAML list ([0.1, 0.2]), a range (0.01..0.3; lr and weight_decay ranges are log-uniform;
log:A..B forces it), an integer range (2..8) or {low, high, step, log}. Samplers: grid (every
combination once), random, tpe. Pruners (median, halving) stop poor trials on the per-epoch
validation accuracy, so they need --set val_size=N; the objective is that validation accuracy.
A failed trial (NaN loss, a bad combination) is recorded and the sweep goes on.

The study lives in runs/NAME/study.journal by default (several worker processes of one machine may
share it); --storage takes a .journal path or any database URL optuna supports (SQLite only with one
worker). Results: runs/NAME/trials.csv, best.yaml (for `effdl train --config`), importance.png, curves.png.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="hyper-parameter sweep (grid, random, TPE) with pruning and workers",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_file", nargs="?", help="a sweep YAML file (keys of effdl.search.SweepSpec)")
    p.add_argument("--config", metavar="YAML", help="base training config every trial starts from")
    p.add_argument("--recipe", metavar="YAML", help="sweep a recipe instead: keys are STAGE.key (train.lr, 2.sparsity)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUES",
                   help="a swept key and its values (list, range, log:range); repeat for several")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a fixed training key for every trial (epochs=2, dataset=synthetic); repeat for several")
    p.add_argument("--sampler", choices=("grid", "random", "tpe"), default=None, help="default: tpe")
    p.add_argument("--trials", type=int, default=None, help="number of trials (grid: every combination)")
    p.add_argument("--pruner", choices=("none", "median", "halving"), default=None,
                   help="stop poor trials on validation accuracy (needs val_size)")
    p.add_argument("--name", default=None, help="the study's name and folder (default: sweep file's name, else sweep)")
    p.add_argument("--out", default=None, metavar="DIR", help="parent folder of the study (default: runs)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="optuna storage: a .journal file or a database URL (default: NAME/study.journal)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker process")
    p.add_argument("--seed", type=int, default=None, help="sampler seed")
    p.add_argument("--resume", metavar="STUDY", default=None, help="join the study in this folder and finish it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from effdl.errors import EffdlError
    from effdl.search.space import parse_assignment
    from effdl.search.sweep import SweepSpec, resume_sweep, run_sweep
    from effdl.train.config import read_config_file

    if args.resume:
        result = resume_sweep(args.resume, workers=args.workers, storage=args.storage, threads_per_worker=args.threads)
    else:
        values: dict = {}
        if args.sweep_file:
            values = read_config_file(args.sweep_file)
            values.setdefault("name", Path(args.sweep_file).stem)
        known = set(SweepSpec.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise EffdlError(f"{args.sweep_file}: unknown sweep key(s) {', '.join(unknown)}; keys: {', '.join(sorted(known))}")
        base = dict(values.get("base") or {})
        if args.config:
            base = {**read_config_file(args.config), **base}
        for text in args.set:
            key, value = parse_assignment(text)
            base[key] = value
        params = dict(values.get("params") or {})
        for text in args.param:
            key, value = parse_assignment(text)
            params[key] = value
        if args.recipe:
            try:
                values["recipe"] = Path(args.recipe).read_text()
            except OSError as exc:
                raise EffdlError(f"cannot read recipe {args.recipe}: {exc.strerror}") from None
        overrides = {"sampler": args.sampler, "trials": args.trials, "pruner": args.pruner, "name": args.name,
                     "out": args.out, "storage": args.storage, "seed": args.seed}
        values.update({k: v for k, v in overrides.items() if v is not None})
        values.setdefault("name", "sweep")
        if args.recipe and base:
            raise EffdlError("--set and --config apply to training sweeps; in a recipe sweep, set keys in the recipe")
        spec = SweepSpec(**{**values, "base": base, "params": params})
        result = run_sweep(spec, workers=args.workers, threads_per_worker=args.threads)
    counts: dict[str, int] = {}
    for row in result.rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    print(f"study {result.directory}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    for row in result.rows:
        params = ", ".join(f"{k[6:]}={v}" for k, v in row.items() if k.startswith("param:"))
        value = f"{row['value']:.4f}" if row["value"] is not None else "-"
        print(f"  trial {row['number']:4d}  {row['state']:9s} {value:>7s}  {params}"
              + (f"  ({row['error']})" if row["error"] else ""))
    if result.best is not None:
        print(f"best: trial {result.best['number']} ({result.best['value']:.4f}); config in {result.files.get('best')}")
    for key in ("importance", "curves"):
        if key in result.files:
            print(f"{key}: {result.files[key]}")
    return 0
