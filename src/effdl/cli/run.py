"""`effdl run RECIPE.yaml`: run a recipe, a chain of stages from training to a shipped model.

A recipe lists stages in order; each stage's keys are the options of the command of that name
(`effdl train`, `distill`, `prune`, `factorize`, `quantize`, `export`, `bench`, `score`, with
underscores: target_macs), and each stage takes the checkpoint the previous one made:

    name: my-recipe
    from: runs/base/best.safetensors      # optional, else start with a train stage
    stages:
      - prune: {method: l1-filter, target_macs: [0.7, 0.5], epochs: 4}   # a list branches
      - quantize: {method: ptq-int8}
      - export: {int8: true}

Stages go to runs/<name>/<NN-stage>/, and a report with every branch on one accuracy-against-score
plot to runs/<name>/report/. The whole recipe is checked before anything runs (`--dry-run` prints
the plan); running it again skips the finished stages and continues an interrupted training or
fine-tune inside its stage. RECIPE may also name a shipped recipe (`effdl run --list`).
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="run a recipe: train, compress, export and measure in one chain",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs="?", help="recipe YAML file, or the name of a shipped recipe")
    p.add_argument("--dry-run", action="store_true", help="check the recipe and print the plan; run nothing")
    p.add_argument("--out", default=None, metavar="DIR", help="parent folder of the recipe's folder (default: "
                   "the recipe's 'out', else runs; relative paths, here and in the file, are from the current folder)")
    p.add_argument("--from", dest="source", default=None, metavar="CKPT",
                   help="the checkpoint the first stage takes (overrides the recipe's 'from')")
    p.add_argument("--name", default=None, help="the recipe's folder name (default: its 'name', else the file's)")
    p.add_argument("--list", action="store_true", help="list the shipped recipes and exit")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="skip the final report (measuring every checkpoint)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from effdl.errors import EffdlError
    from effdl.recipes import load_recipe, run_recipe, shipped_recipes

    if args.list:
        for name, path in shipped_recipes().items():
            first = next((line[2:].strip() for line in path.read_text().splitlines() if line.startswith("# ")), "")
            print(f"{name:24s} {first}")
        return 0
    if not args.recipe:
        raise EffdlError("give a recipe file (or a shipped recipe's name: see `effdl run --list`)")
    recipe = load_recipe(args.recipe)
    if args.out is not None:
        recipe.out = args.out
    if args.source is not None:
        recipe.source = args.source
        recipe.key_lines.pop("from", None)
    if args.name is not None:
        from effdl.recipes.spec import check_name

        recipe.name = check_name(args.name, "--name")
    run_recipe(recipe, dry_run=args.dry_run, report=args.report)
    return 0
