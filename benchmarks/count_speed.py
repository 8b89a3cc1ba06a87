"""Speed of the counting engine: `effdl.measure.profile` against two baselines measured in this run.

Targets (issue "Measure"): ResNet18 at 32x32 under 2 s; torchvision ResNet-50 at 224x224 under 10 s.
Baselines on the same model and input: one plain no-grad forward pass (the floor, since counting
runs one forward pass) and one forward pass under torch.utils.flop_counter.FlopCounterMode (the
usual way to count MACs, which sees conv/matmul only). Each figure is the median of --repeats runs
after one warm-up. The MAC totals of profile and FlopCounterMode are also compared.

    python benchmarks/count_speed.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import write_result
from effdl.measure import profile
from effdl.models import create_model

CASES = [  # (name, model name, input shape, target seconds)
    ("resnet18_32", "resnet18", (1, 3, 32, 32), 2.0),
    ("tv_resnet50_224", "tv:resnet50", (1, 3, 224, 224), 10.0),
]


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    results = {}
    for case, name, shape, target in CASES:
        model = create_model(name, num_classes=1000 if name.startswith("tv:") else 10).eval()
        x = torch.randn(shape)

        def forward():
            with torch.no_grad():
                model(x)

        def flop_counter() -> int:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(x)
            return counter.get_total_flops() // 2

        prof = profile(model, shape)
        results[case] = {
            "model": name,
            "input": list(shape),
            "target_s": target,
            "profile_s": median_seconds(lambda: profile(model, shape), args.repeats),
            "forward_s": median_seconds(forward, args.repeats),
            "flop_counter_s": median_seconds(flop_counter, args.repeats),
            "layers": len(prof.layers),
            "macs": prof.macs,
            "flop_counter_macs": flop_counter(),
        }
        r = results[case]
        r["meets_target"] = r["profile_s"] < target
        r["overhead_vs_forward"] = r["profile_s"] / r["forward_s"]
        r["ratio_vs_flop_counter"] = r["profile_s"] / r["flop_counter_s"]
    write_result("count_speed", {"repeats": args.repeats, "cases": results})


if __name__ == "__main__":
    main()
