"""The end-to-end demo behind `effdl demo`: the shipped `demo` recipe, run by the recipe runner.

train a small CIFAR-10 model (a class-balanced training subset, a few epochs: minutes on a CPU) ->
fp32 ONNX export checked against PyTorch -> int8 post-training quantization -> int8 ONNX export,
checked against the PyTorch int8 model and evaluated in ONNX Runtime on the full test split -> the
recipe's report (accuracy, scores, MACs, size, ONNX Runtime batch-1 latency of both models) ->
a summary table and `demo.json` in the demo's folder.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from effdl.recipes import load_recipe, run_recipe


def run_demo(
    out_dir: str = "runs",
    name: str = "demo",
    model: str = "resnet20",
    epochs: int = 2,
    data_root: str | None = None,
    train_limit: int | None = 40_000,
) -> dict[str, Any]:
    """Run the demo recipe into `out_dir/name`, training `model` for `epochs` on a class-balanced
    `train_limit` of the CIFAR-10 training images (None: all 50,000); every accuracy is on the full
    10,000-image test split. A folder holding an unfinished demo of the same settings is resumed
    (finished stages are skipped). Returns demo.json's content. The defaults take about 4 minutes
    on a quiet 2-core CPU and reach over 60%."""
    recipe = load_recipe("demo")
    recipe.out, recipe.name = str(out_dir), name
    train = recipe.stages[0].values
    train.update(model=model, epochs=epochs, train_limit=train_limit)
    if data_root is not None:
        train["data_root"] = str(data_root)
    outcome = run_recipe(recipe)
    stages = {stage.spec.index: stage.folder for stage in outcome.plan.stages}
    trained, fp32_export = outcome.results[stages[1]], outcome.results[stages[2]]
    int8, int8_export = outcome.results[stages[3]], outcome.results[stages[4]]
    rows = {row["name"]: row for row in outcome.report["rows"]}
    fp32_row, int8_row = rows[stages[1]], rows[stages[3]]
    summary = {
        "accuracy": trained["accuracy"], "correct": trained["correct"], "total": trained["total"],
        "profile": {k: fp32_row[k] for k in ("params", "macs", "size_bytes", "peak_activation_bytes")},
        "scores": {"imt2021": fp32_row["imt2021_score"], "imt2024": fp32_row["imt2024_score"]},
        "bench": {"onnx": {"max_abs_diff": fp32_export["max_abs_diff"], "bytes": fp32_export["bytes"]},
                  "ort_batch1_ms": fp32_row.get("latency_ms")},
        "train_limit": train_limit, "epochs": epochs, "images_per_s": trained["images_per_s"],
        "train_time_s": trained["time_s"],
        "int8": {"accuracy": int8["accuracy"], "onnx_accuracy": int8_export["onnx_accuracy"],
                 "imt2024": int8_row["imt2024_score"], "onnx_max_abs_diff": int8_export["max_abs_diff"],
                 "onnx_bytes": int8_export["bytes"], "ort_batch1_ms": int8_row.get("latency_ms"),
                 "fp32_ort_batch1_ms": fp32_row.get("latency_ms")},
        "files": {"model": str(recipe.directory / stages[1] / "best.safetensors"),
                  "onnx": fp32_export["onnx"], "int8_onnx": int8_export["onnx"],
                  "report": str(recipe.directory / "report")},
    }
    _print_summary(summary, model, epochs, train_limit)
    (recipe.directory / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    Console(stderr=True).print(f"written: {recipe.directory}/ (one folder per stage, report/, demo.json)")
    return summary


def _print_summary(s: dict[str, Any], model: str, epochs: int, train_limit: int | None) -> None:
    images = f"{train_limit:,} of the training images" if train_limit else "the training images"
    table = Table(title=f"effdl demo: {model}, {epochs} epochs on {images}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    int8 = s["int8"]
    latency = (f"{s['bench']['ort_batch1_ms']:.2f} / {int8['ort_batch1_ms']:.2f} ms"
               if s["bench"]["ort_batch1_ms"] and int8["ort_batch1_ms"] else "-")
    for row in (
        ("test accuracy (full test split)", f"{s['accuracy']:.2%}"),
        ("parameters", f"{s['profile']['params']:,}"),
        ("MACs", f"{s['profile']['macs']:,}"),
        ("size (packed)", f"{s['profile']['size_bytes'] / 1024:,.1f} KiB"),
        ("peak activations (batch 1)", f"{s['profile']['peak_activation_bytes'] / 1024:,.1f} KiB"),
        ("score imt2021 / imt2024", f"{s['scores']['imt2021']:.4f} / {s['scores']['imt2024']:.4f}"),
        ("ONNX max |diff| vs PyTorch", f"{s['bench']['onnx']['max_abs_diff']:.2e}"),
        ("int8 accuracy, PyTorch / ONNX Runtime", f"{int8['accuracy']:.2%} / {int8['onnx_accuracy']:.2%}"),
        ("int8 score imt2024", f"{int8['imt2024']:.4f}"),
        ("ONNX file fp32 / int8", f"{s['bench']['onnx']['bytes'] / 1024:,.1f} / {int8['onnx_bytes'] / 1024:,.1f} KiB"),
        ("ONNX Runtime batch 1, 1 thread: fp32 / int8", latency),
    ):
        table.add_row(*row)
    Console(stderr=True).print(table)
