"""Quantization on CIFAR-10: int8 PTQ drop, QAT 4-bit / 2-bit drop, int8 vs fp32 ONNX Runtime latency.

1. int8 post-training quantization of --checkpoint (BatchNorm folded, per-channel int8 weights,
   per-tensor activations calibrated on --calibration-images training images) with minmax,
   percentile and mse calibration: accuracy drop (target <= 0.5 point). The minmax model is also
   exported as QDQ int8 ONNX and evaluated in ONNX Runtime (target: within 0.3 point of PyTorch).
2. QAT (LSQ) at 4 and 2 bits for weights and activations, first/last layer at 8 bits, fine-tuned
   for --epochs: accuracy drop (targets <= 1 and <= 3 points, given enough epochs). Measured on a
   resnet20 (BENCHMARKS.md): 4 bits meet theirs in 4 epochs; 2 bits need --distill 0.9 and 24.
3. Binary weights (--binary-method xnor: BWN, sign x per-channel mean|w|; or binaryconnect), first and
   last layer kept in float, activations in float, fine-tuned from --checkpoint for --binary-epochs
   (target: at least 85%, given enough epochs). Skipped when --binary-epochs is 0.
4. Batch-1, single-thread ONNX Runtime latency, fp32 against int8 QDQ, for the checkpoint's model
   and for an (untrained) resnet18 (target: int8 at least 1.5x faster for a resnet18-size model),
   with the number of convolutions ONNX Runtime runs on integers (QLinearConv) and in float.

Smoke test on a few hundred images (numbers meaningless, the pipeline exercised):
    python benchmarks/quantize_cifar10.py --checkpoint runs/r20/best.safetensors --epochs 1 \
        --limit-train 256 --limit-test 256 --repeats 5
Accuracies use the full test split unless --limit-test is given. Writes bench_results/quantize_cifar10.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import write_result
from effdl.checkpoint import load_model
from effdl.compress.quantize import Int8StaticConfig, calibration_images, verify_model_bits
from effdl.data import BatchLoader, limited, load_dataset
from effdl.deploy.int8 import export_int8_onnx, optimized_op_counts
from effdl.deploy.onnx import export_onnx
from effdl.measure import evaluate, evaluate_onnx
from effdl.measure.latency import onnx_latency
from effdl.models import create_model
from effdl.pipelines.quantize import QuantizeOptions, quantize_model, quantize_run


def ptq(model, data, loader, images, method: str):
    q = quantize_model(load_fresh(model), Int8StaticConfig(calibration=method), data, calibration_images=len(images))
    verify_model_bits(q)
    return q, evaluate(q, loader).top1


def load_fresh(model):
    import copy

    return copy.deepcopy(model).eval()


def qat(data, bits: int, epochs: int, args, workdir: Path) -> dict:
    options = QuantizeOptions(method="qat", bits=bits, qat_method="lsq", first_last_bits=8, epochs=epochs,
                              **fine_tune_options(args, epochs))
    return {"bits": bits, **fine_tune_quantized(data, options, args, workdir / f"qat{bits}")}


def binary(data, args, workdir: Path) -> dict:
    options = QuantizeOptions(method=args.binary_method, binary_acts=False, float_first_last=True,
                              epochs=args.binary_epochs, **fine_tune_options(args, args.binary_epochs))
    return {"method": args.binary_method, "weights": "binary (first and last layer float)", "activations": "float",
            **fine_tune_quantized(data, options, args, workdir / "binary")}


def fine_tune_options(args, epochs: int) -> dict:
    """The options of a quantization run; the fine-tune's own (lr, batch size, bf16, compile,
    distill) only when it fine-tunes (`epochs` > 0): QuantizeOptions refuses them otherwise."""
    tune = {"lr": args.lr, "batch_size": args.batch_size, "bf16": args.bf16, "compile": args.compile,
            "distill": args.distill} if epochs else {}
    return {**tune, "device": args.device, "calibration_images": args.calibration_images}


def fine_tune_quantized(data, options: QuantizeOptions, args, out: Path) -> dict:
    """The `effdl quantize` pipeline itself (quantize_run): calibration, the one fine-tuning path
    (the checkpoint's own training config, this script's epochs and learning rate), distillation
    from the float checkpoint with --distill, the model's bits verified, the full test split."""
    start = time.perf_counter()
    summary = quantize_run(args.checkpoint, options, out, data=data)
    training = summary["details"]["training"] or {}
    return {"accuracy_before_training": summary["details"]["accuracy_before_finetune"],
            "accuracy": summary["accuracy"], "accuracy_per_epoch": training.get("accuracy_per_epoch"),
            "epochs": options.epochs, "distill": options.distill, "bf16_training": training.get("bf16"),
            "compiled": options.compile, "train_time_s": round(time.perf_counter() - start, 1)}


def latency_pair(model, images, repeats: int, workdir: Path, name: str) -> dict:
    """Batch-1, single-thread ONNX Runtime latency of the fp32 and the int8 QDQ export of `model`."""
    fp32 = export_onnx(model, workdir / f"{name}-fp32.onnx")
    int8 = export_int8_onnx(model, workdir / f"{name}-int8.onnx", images)
    t32 = onnx_latency(fp32, 1, threads=1, repeats=repeats, warmup=5).median_ms
    t8 = onnx_latency(int8, 1, threads=1, repeats=repeats, warmup=5).median_ms
    ops = optimized_op_counts(int8)
    return {"model": name, "threads": 1, "fp32_ms": t32, "int8_ms": t8, "speedup": t32 / t8,
            "fp32_bytes": fp32.stat().st_size, "int8_bytes": int8.stat().st_size,
            "integer_convs": ops.get("QLinearConv", 0), "float_convs": ops.get("Conv", 0) + ops.get("FusedConv", 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", default="cifar10")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 2], help="QAT bit widths (weights and activations)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[5],
                        help="QAT fine-tuning epochs: one number for every bit width, or one per --bits entry")
    parser.add_argument("--bf16", action="store_true",
                        help="train QAT under bf16 autocast (2x faster on AMX CPUs; evaluation stays fp32)")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=None, help="fine-tuning batch size (default: the checkpoint's run's)")
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--limit-test", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the training step (fuses the fake-quant element-wise ops: 2.5x on CPU)")
    parser.add_argument("--distill", type=float, default=0.0, metavar="ALPHA",
                        help="QAT and binary fine-tunes: distillation from the float checkpoint (weight ALPHA; 0: off)")
    parser.add_argument("--skip-qat", action="store_true")
    parser.add_argument("--skip-ptq", action="store_true")
    parser.add_argument("--binary-epochs", type=int, default=0, help="fine-tuning epochs of the binary part (0: skip)")
    parser.add_argument("--binary-method", default="xnor", choices=("xnor", "binaryconnect"))
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()

    model, _ = load_model(args.checkpoint)
    model = model.cpu().eval()
    data = limited(load_dataset(args.data, root=args.data_root), args.limit_train, args.limit_test)
    loader = BatchLoader.for_split(data, "test", batch_size=256)
    images = calibration_images(data, min(args.calibration_images, len(data.train_labels)))
    baseline = evaluate(model, loader).top1
    result = {"checkpoint": args.checkpoint, "test_images": len(data.test_labels), "float_accuracy": baseline,
              "ptq_int8": {}, "qat": [], "latency": [],
              "targets": {"ptq_int8_drop_points": 0.5, "qat4_drop_points": 1, "qat2_drop_points": 3,
                          "onnx_vs_torch_points": 0.3, "int8_speedup": 1.5}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for method in () if args.skip_ptq else ("minmax", "percentile", "mse"):
            q, accuracy = ptq(model, data, loader, images, method)
            entry = {"accuracy": accuracy, "drop_points": 100 * (baseline - accuracy)}
            if method == "minmax":
                path = export_int8_onnx(q, workdir / "ptq.onnx")
                entry["onnx_accuracy"] = evaluate_onnx(path, loader).top1
                entry["onnx_vs_torch_points"] = 100 * abs(entry["onnx_accuracy"] - accuracy)
            result["ptq_int8"][method] = entry
            write_result("quantize_cifar10", result)  # each part is saved as soon as it is measured
        if not args.skip_qat:
            epochs = args.epochs * len(args.bits) if len(args.epochs) == 1 else args.epochs
            if len(epochs) != len(args.bits):
                parser.error("--epochs takes one number or one per --bits entry")
            for bits, n in zip(args.bits, epochs):
                entry = qat(data, bits, n, args, workdir)
                entry["drop_points"] = 100 * (baseline - entry["accuracy"])
                result["qat"].append(entry)
                write_result("quantize_cifar10", result)
        if args.binary_epochs:
            result["binary"] = binary(data, args, workdir)
            result["binary"]["meets_target"] = result["binary"]["accuracy"] >= 0.85
            write_result("quantize_cifar10", result)
        if args.skip_latency:
            return
        torch.manual_seed(0)
        result["latency"].append(latency_pair(model, images, args.repeats, workdir, "checkpoint"))
        result["latency"].append(latency_pair(create_model("resnet18").eval(), images, args.repeats, workdir,
                                              "resnet18-untrained"))
    cpu_flags = open("/proc/cpuinfo").read()
    result["cpu_int8_instructions"] = sorted({f for f in ("avx512_vnni", "avx_vnni", "amx_int8", "avx2")
                                              if f" {f}" in cpu_flags})
    write_result("quantize_cifar10", result)


if __name__ == "__main__":
    main()
