"""Architecture search on CIFAR-10 under resnet20's MACs, then full training of the front, and a
search under a 64 KiB peak-activation budget at int8 (issue 14's targets).

The budget: `--proxy-epochs` x `--trials` proxy epochs on a `--proxy-limit` subset plus `--full-top`
full trainings of `--full-epochs`; give the hand-designed baseline (resnet20) the same total.

    EFFDL_DATA=../shared/data python benchmarks/search_cifar10.py --trials 24 --proxy-epochs 3 \
        --proxy-limit 10000 --full-epochs 30 --full-top 3
    python benchmarks/search_cifar10.py --dataset synthetic --trials 3 --proxy-limit 128 --full-epochs 1 --full-top 1  # smoke
"""

from __future__ import annotations

import argparse
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
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="effdl-search-bench-")
    resnet20_macs = profile(create_model("resnet20"), (1, 3, 32, 32)).macs
    base = {"dataset": args.dataset, "batch_size": 128 if args.proxy_limit >= 1000 else 32}
    proxy = {"epochs": args.proxy_epochs, "train_limit": args.proxy_limit, "val_size": max(32, args.proxy_limit // 5)}
    results = {}
    for label, space, objectives, constraints in (
            ("resnet20_macs", RESNET_SPACE, ["accuracy", "macs"], Constraints(max_macs=resnet20_macs)),
            ("peak_64kb_int8", MCU_SPACE, ["accuracy", "peak_kb"], Constraints(max_peak_kb=64, bits=8))):
        start = time.perf_counter()
        result = run_search(SearchSpec(name=f"{args.name}-{label}", space=space, objectives=objectives,
                                       constraints=constraints, strategy="nsga2", trials=args.trials, population=8,
                                       base=base, proxy=proxy, full={"epochs": args.full_epochs},
                                       full_top=args.full_top, out=out))
        results[label] = {"time_s": round(time.perf_counter() - start, 1), "candidates": len(result.rows),
                          "proxy_trainings": result.trainings, "front": result.front,
                          "rank_correlation": result.correlation}
    write_result(args.name, {"resnet20_macs": resnet20_macs, "trials": args.trials, "proxy": proxy,
                             "full_epochs": args.full_epochs, "full_top": args.full_top, "out": out, **results})


if __name__ == "__main__":
    main()
