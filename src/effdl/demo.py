"""The end-to-end demo behind `effdl demo`: every stage is a plain effdl call, chained.

train a small CIFAR-10 model -> accuracy on the full test split -> counts and scores under the
course and MicroNet rules -> ONNX export checked against PyTorch -> latency of both -> a summary
table and `demo.json` in the run directory. Later stages (quantization, pruning) reuse the
trained checkpoint the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from effdl.checkpoint import load_model
from effdl.deploy.bench import benchmark_model
from effdl.measure import profile, score
from effdl.train import TrainConfig, train


def run_demo(
    out_dir: str = "runs",
    name: str = "demo",
    model: str = "resnet20",
    epochs: int = 4,
    data_root: str | None = None,
    subset: int | None = None,
) -> dict[str, Any]:
    console = Console()
    run_dir = Path(out_dir) / name
    console.rule(f"1. train {model} on CIFAR-10 for {epochs} epochs -> {run_dir}")
    config = TrainConfig(
        name=name, out_dir=out_dir, dataset="cifar10", data_root=data_root, model=model, epochs=epochs,
        batch_size=256, lr=0.2, label_smoothing=0.1, subset=subset,
    )
    result = train(config)
    console.print(f"test accuracy {result.accuracy:.2%} ({result.correct}/{result.total}), "
                  f"{result.images_per_s:,.0f} training images/s, {result.time_s:.0f} s")

    console.rule("2. count and score (measured from the model itself)")
    net, _ = load_model(run_dir / "best.safetensors")
    counts = profile(net, (1, 3, 32, 32))
    scores = {
        f"{scorer}": score(counts, scorer, "cifar10") for scorer in ("imt2021", "imt2024")
    }
    for name_, s in scores.items():
        console.print(f"{name_}: score {s.score:.4f} (params {s.param_score:.4f} + ops {s.op_score:.4f}); "
                      f"qualifies at the 90% threshold: {s.qualifies(result.correct, result.total)}")

    console.rule("3. export to ONNX, check against PyTorch, time both at batch 1 and 64 (CPU)")
    bench = benchmark_model(net, (3, 32, 32), batch_sizes=(1, 64), onnx_dir=run_dir, repeats=20)

    table = Table(title=f"effdl demo: {model}, {epochs} epochs")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("test accuracy", f"{result.accuracy:.2%}"),
        ("parameters", f"{counts.params:,}"),
        ("MACs", f"{counts.macs:,}"),
        ("size (packed)", f"{counts.size_bytes / 1024:,.1f} KiB"),
        ("peak activations (batch 1)", f"{counts.peak_activation_bytes / 1024:,.1f} KiB"),
        *((f"score {k}", f"{v.score:.4f}") for k, v in scores.items()),
        ("ONNX max |diff| vs PyTorch", f"{bench.onnx_max_abs_diff:.2e}"),
        ("ONNX file", f"{bench.onnx_bytes / 1024:,.1f} KiB"),
    ]
    for lat in bench.latencies:
        rows.append((f"latency {lat.backend} batch {lat.batch_size}", f"{lat.median_ms:.2f} ms"))
    for row in rows:
        table.add_row(*row)
    console.print(table)

    summary = {
        "accuracy": result.accuracy, "correct": result.correct, "total": result.total,
        "profile": {"params": counts.params, "macs": counts.macs, "size_bytes": counts.size_bytes,
                    "peak_activation_bytes": counts.peak_activation_bytes},
        "scores": {k: v.score for k, v in scores.items()},
        "bench": bench.to_dict(),
    }
    (run_dir / "demo.json").write_text(json.dumps(summary, indent=2))
    console.print(f"written: {run_dir}/ (checkpoints, metrics, model.onnx, demo.json)")
    return summary
