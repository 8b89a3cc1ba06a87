"""Architecture search on CIFAR-10 under resnet20's MACs, then full training of the front, and a
search under a 64 KiB peak-activation budget at int8 (issue 14's targets).

The budget: `--proxy-epochs` x `--trials` proxy epochs on a `--proxy-limit` subset plus `--full-top`
full trainings of `--full-epochs`; give the hand-designed baseline (resnet20) the same total.
Every training (proxy and full) uses `--recipe`, by default the CPU recipe of the 15-epoch resnet20
in BENCHMARKS.md; `--baseline CKPT` (that resnet20, trained with the same recipe and
`--full-epochs`) is evaluated on the full test split in the same run and the targets are judged
against it: a front member at least as accurate at no more MACs, or within 0.3 point at <= 0.6x.

    EFFDL_DATA=../shared/data python benchmarks/search_cifar10.py --trials 24 --proxy-epochs 3 \
        --proxy-limit 10000 --full-epochs 15 --full-top 3 --baseline runs/base-resnet20-15ep/best.safetensors
    python benchmarks/search_cifar10.py --dataset synthetic --trials 3 --proxy-limit 128 --full-epochs 1 --full-top 1  # smoke
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from common import write_result

from effdl.measure.counting import profile
from effdl.models import create_model
from effdl.search.arch import Constraints, SearchSpec, run_search

# Centred on resnet20 (16/32/64 x 3 blocks): about half the candidates fit under its MACs.
RESNET_SPACE = {"family": "resnet", "stem": [12, 16],
                "stages": [{"width": [12, 16, 24], "depth": [1, 2, 3], "kernel": [3, 5], "op": ["conv", "separable"]},
                           {"width": [24, 32, 48], "depth": [1, 2, 3, 4], "kernel": [3, 5], "op": ["conv", "separable"]},
                           {"width": [48, 64, 96], "depth": [1, 2, 3, 4], "kernel": [3], "op": ["conv", "separable"]}]}
MCU_SPACE = {"family": "mobilenet", "stem": [8, 16],
             "stages": [{"width": [8, 16], "depth": [1, 2], "expansion": [2, 4], "stride": 2},
                        {"width": [16, 24, 32], "depth": [1, 2, 3], "expansion": [2, 4, 6], "se": [False, True]},
                        {"width": [32, 48, 64], "depth": [1, 2, 3], "expansion": [2, 4, 6], "se": [False, True],
                         "kernel": [3, 5]}]}

SEARCHES = ("resnet20_macs", "peak_64kb_int8")  # the two searches, built in main()

# The recipe of the 15-epoch CPU resnet20 in BENCHMARKS.md, so searched models train as the baseline did.
CPU_RECIPE = {"batch_size": 256, "lr": 0.2, "weight_decay": 5e-4, "label_smoothing": 0.1, "schedule": "onecycle"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--proxy-epochs", type=int, default=3)
    parser.add_argument("--proxy-limit", type=int, default=10000)
    parser.add_argument("--full-epochs", type=int, default=30)
    parser.add_argument("--full-top", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument("--name", default="search_cifar10")
    parser.add_argument("--recipe", type=json.loads, default=CPU_RECIPE,
                        help=f"training keys of every training, as JSON (default: {json.dumps(CPU_RECIPE)})")
    parser.add_argument("--baseline", default=None, help="the hand-designed baseline's checkpoint, to judge the targets")
    parser.add_argument("--searches", nargs="+", choices=SEARCHES, default=list(SEARCHES),
                        help="which searches to run (default: both)")
    args = parser.parse_args()
    baseline = measure_baseline(args.baseline) if args.baseline else None
    out = args.out or tempfile.mkdtemp(prefix="effdl-search-bench-")
    resnet20_macs = profile(create_model("resnet20"), (1, 3, 32, 32)).macs
    base = {"dataset": args.dataset, **args.recipe}
    if args.proxy_limit < 1000:
        base["batch_size"] = 32
    proxy = {"epochs": args.proxy_epochs, "train_limit": args.proxy_limit, "val_size": max(32, args.proxy_limit // 5)}
    results = {}
    searches = {"resnet20_macs": (RESNET_SPACE, ["accuracy", "macs"], Constraints(max_macs=resnet20_macs)),
                "peak_64kb_int8": (MCU_SPACE, ["accuracy", "peak_kb"], Constraints(max_peak_kb=64, bits=8))}
    for label in args.searches:
        space, objectives, constraints = searches[label]
        start = time.perf_counter()
        result = run_search(SearchSpec(name=f"{args.name}-{label}", space=space, objectives=objectives,
                                       constraints=constraints, strategy="nsga2", trials=args.trials, population=8,
                                       base=base, proxy=proxy, full={"epochs": args.full_epochs},
                                       full_top=args.full_top, out=out))
        results[label] = {"time_s": round(time.perf_counter() - start, 1), "candidates": len(result.rows),
                          "proxy_trainings": result.trainings, "front": result.front,
                          "rank_correlation": result.correlation}
    verdict = judge(results["resnet20_macs"]["front"], baseline) if baseline and "resnet20_macs" in results else None
    write_result(args.name, {"searches": args.searches, "resnet20_macs": resnet20_macs, "trials": args.trials, "proxy": proxy,
                             "recipe": args.recipe, "full_epochs": args.full_epochs, "full_top": args.full_top,
                             "out": out, "baseline": baseline, "targets": verdict, **results})


def measure_baseline(path: str) -> dict:
    """The baseline checkpoint's top-1 on the full test split and its MACs, measured here."""
    from effdl.checkpoint import load_model
    from effdl.data import BatchLoader, load_dataset_for
    from effdl.measure import evaluate
    from effdl.models.registry import data_meta

    model, _ = load_model(path)
    data = load_dataset_for(data_meta(model))
    accuracy = evaluate(model.eval(), BatchLoader.for_split(data, "test", batch_size=500)).top1
    return {"checkpoint": path, "accuracy": accuracy, "macs": profile(model, (1, *data.image_shape)).macs}


def judge(front: list[dict], baseline: dict) -> dict:
    """Issue 14's search target against the measured baseline: a fully trained front member that
    beats its accuracy at no more MACs, or comes within 0.3 point at 0.6x its MACs or less."""
    trained = [f for f in front if f.get("full_accuracy") is not None]
    beats = [f["number"] for f in trained
             if f["full_accuracy"] >= baseline["accuracy"] and f["metrics"]["macs"] <= baseline["macs"]]
    matches = [f["number"] for f in trained if f["full_accuracy"] >= baseline["accuracy"] - 0.003
               and f["metrics"]["macs"] <= 0.6 * baseline["macs"]]
    return {"beats_at_no_more_macs": beats, "within_0.3_at_0.6x_macs": matches, "met": bool(beats or matches)}


if __name__ == "__main__":
    main()
