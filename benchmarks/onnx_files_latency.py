"""ONNX Runtime latency of several ONNX files against the first one, in one process, interleaved.

Each round times every file in turn (`effdl.measure.latency.onnx_latency`, one session per file made
once, random input of the file's own shape), so machine noise falls on all of them alike; the
result per file is the median over rounds of each round's median, and its ratio to the first file
(above 1: slower than the baseline). For comparing exports of one model: fp32 vs int8, or two int8
graphs that run different numbers of integer kernels.

    python benchmarks/onnx_files_latency.py base.onnx other.onnx ... --batch-size 1 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics

from common import write_result
from effdl.deploy.onnx import ort_session
from effdl.measure.latency import onnx_latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="ONNX files; the first is the baseline")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=300, help="timed calls per file per round")
    args = parser.parse_args()
    sessions = {f: ort_session(f, threads=args.threads) for f in args.files}
    load_before = os.getloadavg()[0]
    medians: dict[str, list[float]] = {f: [] for f in args.files}
    for round_index in range(args.rounds):
        for f, session in sessions.items():
            timed = onnx_latency(f, args.batch_size, session=session, warmup=50 if round_index == 0 else 5,
                                 repeats=args.repeats)
            medians[f].append(timed.median_ms)
    base = statistics.median(medians[args.files[0]])
    rows = [{"file": f, "median_ms": round(statistics.median(m), 4),
             "ratio_to_first": round(statistics.median(m) / base, 3)} for f, m in medians.items()]
    for row in rows:
        print(row, flush=True)
    write_result("onnx_files_latency", {"batch_size": args.batch_size, "threads": args.threads,
                                        "rounds": args.rounds, "repeats": args.repeats, "rows": rows,
                                        "load_average": [load_before, os.getloadavg()[0]]})


if __name__ == "__main__":
    main()
