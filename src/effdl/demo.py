"""The end-to-end demo behind `effdl demo`: every stage is a plain effdl call, chained.

train a small CIFAR-10 model (a class-balanced training subset, a few epochs: minutes on a CPU) ->
accuracy on the full test split -> counts and scores under the course rules -> ONNX export checked
against PyTorch -> latency of both -> int8 post-training quantization -> its accuracy and score ->
int8 ONNX export, checked against the PyTorch int8 model, and its accuracy in ONNX Runtime -> a
summary table and `demo.json` in the run directory.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from effdl.checkpoint import load_model
from effdl.compress.quantize import Int8StaticConfig, calibration_images
from effdl.data import BatchLoader
from effdl.deploy.bench import benchmark_model
from effdl.deploy.int8 import export_int8_onnx
from effdl.deploy.onnx import check_onnx
from effdl.measure import evaluate, evaluate_onnx, profile, score
from effdl.measure.latency import onnx_latency
from effdl.pipelines.quantize import quantize_model
from effdl.train import TrainConfig, train
from effdl.train.run import prepare_data


def run_demo(
    out_dir: str = "runs",
    name: str = "demo",
    model: str = "resnet20",
    epochs: int = 2,
    data_root: str | None = None,
    train_limit: int | None = 40_000,
) -> dict[str, Any]:
    """Run the demo into `out_dir/name` (which must not hold a run: see effdl.fileio.claim_run_dir),
    training `model` for `epochs` on a class-balanced `train_limit` of the CIFAR-10 training images
    (None: all 50,000); every accuracy is on the full 10,000-image test split. Returns demo.json's
    content. The defaults take about 4 minutes on a quiet 2-core CPU and reach over 60%."""
    console = Console()
    run_dir = Path(out_dir) / name
    images = f"{train_limit:,} of the training images" if train_limit else "the training images"
    console.rule(f"1. train {model} on CIFAR-10 ({images}) for {epochs} epochs -> {run_dir}")
    config = TrainConfig(
        name=name, out_dir=out_dir, dataset="cifar10", data_root=data_root, model=model, epochs=epochs,
        batch_size=128, lr=0.2, label_smoothing=0.1, train_limit=train_limit,
    )
    data, _ = prepare_data(config)  # decoded once, for training and for calibration
    result = train(config, data=data)
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

    console.rule("3. export to ONNX, check against PyTorch, time both at batch 1 and 64 (CPU, 1 thread)")
    console.print("exporting ONNX and timing...")
    bench = benchmark_model(net, (3, 32, 32), batch_sizes=(1, 64), onnx_dir=run_dir, repeats=20, threads=1)

    console.rule("4. int8 post-training quantization (BN folded, 512 calibration images), then export")
    test_loader = BatchLoader.for_split(data, "test", batch_size=500)
    # the library's PTQ step (BatchNorm folded, ranges calibrated on 512 seeded training images)
    int8 = quantize_model(copy.deepcopy(net), Int8StaticConfig(), data, calibration_images=512)
    calibration = calibration_images(data, 512)  # the same images, to check the export on
    console.print(f"evaluating on {len(data.test_labels):,} test images...")
    int8_acc = evaluate(int8, test_loader)
    int8_score = score(int8, "imt2024", "cifar10")
    console.print("exporting int8 ONNX...")
    int8_path = export_int8_onnx(int8, run_dir / "model_int8.onnx")
    # the library's export check (EffdlError if ONNX Runtime's predictions disagree with PyTorch's)
    int8_diff = check_onnx(int8, int8_path, images=calibration[:64])
    console.print(f"int8 ONNX matches the PyTorch int8 model on 64 training images (max abs diff {int8_diff:.2e}); "
                  f"evaluating it in ONNX Runtime on {len(data.test_labels):,} test images...")
    int8_onnx_acc = evaluate_onnx(int8_path, test_loader)
    console.print(f"int8: accuracy {int8_acc.top1:.2%} in PyTorch, {int8_onnx_acc.top1:.2%} in ONNX Runtime; "
                  f"imt2024 score {int8_score.score:.4f}")
    int8_latency = onnx_latency(int8_path, 1, threads=1, repeats=50)
    fp32_latency = onnx_latency(run_dir / "model.onnx", 1, threads=1, repeats=50)

    table = Table(title=f"effdl demo: {model}, {epochs} epochs on {images}")
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
    rows += [
        ("int8 accuracy, PyTorch / ONNX Runtime", f"{int8_acc.top1:.2%} / {int8_onnx_acc.top1:.2%}"),
        ("int8 score imt2024", f"{int8_score.score:.4f}"),
        ("int8 ONNX file", f"{int8_path.stat().st_size / 1024:,.1f} KiB"),
        ("ONNX Runtime batch 1, 1 thread: fp32 / int8",
         f"{fp32_latency.median_ms:.2f} / {int8_latency.median_ms:.2f} ms"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)

    summary = {
        "accuracy": result.accuracy, "correct": result.correct, "total": result.total,
        "profile": {"params": counts.params, "macs": counts.macs, "size_bytes": counts.size_bytes,
                    "peak_activation_bytes": counts.peak_activation_bytes},
        "scores": {k: v.score for k, v in scores.items()},
        "bench": bench.to_dict(),
        "train_limit": train_limit, "epochs": epochs, "images_per_s": result.images_per_s, "train_time_s": result.time_s,
        "int8": {"accuracy": int8_acc.top1, "onnx_accuracy": int8_onnx_acc.top1, "imt2024": int8_score.score,
                 "onnx_max_abs_diff": int8_diff,
                 "onnx_bytes": int8_path.stat().st_size, "ort_batch1_ms": int8_latency.median_ms,
                 "fp32_ort_batch1_ms": fp32_latency.median_ms},
    }
    (run_dir / "demo.json").write_text(json.dumps(summary, indent=2))
    console.print(f"written: {run_dir}/ (checkpoints, metrics, model.onnx, demo.json)")
    return summary
