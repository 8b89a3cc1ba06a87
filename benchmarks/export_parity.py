"""Export parity: does ONNX Runtime compute what PyTorch computes, for every export path a user takes?

For one trained checkpoint, each path below is exported with the library's checked exporters and
then both sides are evaluated on the FULL test split (the same batches): top-1 in PyTorch, top-1
in ONNX Runtime, the fraction of test images whose predicted class agrees, and what the export
check measured (max |diff| in steps of the output grid). The float export is the baseline.

- fp32: the float model, `export_verified` (float tolerance).
- ptq-int8: BatchNorm folded, Int8StaticConfig, calibrated on 512 training images, int8 QDQ graph.
- qat-minmax-8: FakeQuantConfig(8, 8, method="minmax") on the UNFOLDED model (BatchNorm after a
  quantized conv: the case that used to export wrong), calibrated, exported as int8 QDQ (no QAT
  epochs: the fault was in the export, not in training).
- qat-lsq-4: FakeQuantConfig(4, 4, method="lsq") (first and last layer 8-bit) on the unfolded
  model, output quantizers on (every conv and residual Add on integers), calibrated, no QAT epochs;
  and the same without output quantizers. PyTorch's eval rounds biases as the integer kernels do,
  so the two sides should agree on almost every image even at 4 bits.
- DoReFa 4-bit: must be refused by the int8 export (its grids are not int8's), not exported wrong.

    EFFDL_DATA=../shared/data python benchmarks/export_parity.py runs/demo/best.safetensors
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import write_result
from effdl.checkpoint import load_model
from effdl.compress.quantize import FakeQuantConfig, calibrate, calibration_images, quantize_
from effdl.data import BatchLoader, load_dataset_for
from effdl.deploy.int8 import export_int8_verified, optimized_op_counts
from effdl.deploy.onnx import export_verified, ort_session
from effdl.errors import EffdlError


def predictions(model: torch.nn.Module | None, onnx_path: Path | None, loader: BatchLoader) -> np.ndarray:
    """Predicted class of every test image, by the PyTorch model or the ONNX file."""
    out = []
    session = ort_session(onnx_path, threads=torch.get_num_threads()) if onnx_path is not None else None
    with torch.no_grad():
        for images, _ in loader:
            if session is not None:
                logits = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
                out.append(logits.argmax(1))
            else:
                out.append(model(images).argmax(1).numpy())
    return np.concatenate(out)


def measure(name: str, model: torch.nn.Module, path: Path, check, loader: BatchLoader, labels: np.ndarray) -> dict:
    start = time.perf_counter()
    torch_pred, onnx_pred = predictions(model.eval(), None, loader), predictions(None, path, loader)
    row = {
        "path": name, "pytorch_top1": float((torch_pred == labels).mean()), "onnx_top1": float((onnx_pred == labels).mean()),
        "agreement": float((torch_pred == onnx_pred).mean()), "check_max_abs_diff": check.max_abs_diff,
        "check_max_steps": check.max_steps, "check_rule": check.rule, "onnx_bytes": path.stat().st_size,
        "seconds": round(time.perf_counter() - start, 1),
    }
    row["top1_gap_pt"] = round(100 * (row["onnx_top1"] - row["pytorch_top1"]), 2)
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()

    float_model, _ = load_model(args.checkpoint)
    data = load_dataset_for(float_model.effdl_data, args.data_root)
    loader = BatchLoader.for_split(data, "test", batch_size=500)
    labels = data.test_labels.numpy()
    calib = calibration_images(data, 512)
    check_images = calibration_images(data, 256, seed=1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path, check = export_verified(float_model, tmp / "fp32.onnx", images=check_images)
        rows.append(measure("fp32", float_model, path, check, loader, labels))

        path, check, int8 = export_int8_verified(float_model, tmp / "ptq_int8.onnx", calib, check_images=check_images)
        rows.append(measure("ptq-int8", int8, path, check, loader, labels))

        qat = copy.deepcopy(float_model)
        quantize_(qat, FakeQuantConfig(weight_bits=8, act_bits=8, method="minmax"))
        calibrate(qat, calib)
        path, check, int8 = export_int8_verified(qat, tmp / "qat_int8.onnx", check_images=check_images)
        rows.append(measure("qat-minmax-8 (BN unfolded)", int8, path, check, loader, labels))

        for outputs in (True, False):
            lsq4 = copy.deepcopy(float_model)
            quantize_(lsq4, FakeQuantConfig(weight_bits=4, act_bits=4, method="lsq", quantize_outputs=outputs))
            calibrate(lsq4, calib)
            name = "lsq4" if outputs else "lsq4_float_outputs"
            path, check, int8 = export_int8_verified(lsq4, tmp / f"{name}.onnx", check_images=check_images)
            rows.append(measure(f"qat-lsq-4 ({'output quantizers' if outputs else 'float outputs'}, BN unfolded)",
                                int8, path, check, loader, labels))
            rows[-1]["integer_convs"] = optimized_op_counts(path).get("QLinearConv", 0)

        dorefa = copy.deepcopy(float_model)
        quantize_(dorefa, FakeQuantConfig(weight_bits=4, act_bits=4, method="dorefa"))
        calibrate(dorefa, calib)
        try:
            export_int8_verified(dorefa, tmp / "dorefa4.onnx", check_images=check_images)
            refused = None
        except EffdlError as exc:
            refused = str(exc)
        print("4-bit DoReFa int8 export:", refused or "ACCEPTED (wrong)", flush=True)
        leftover = (tmp / "dorefa4.onnx").exists()
    write_result("export_parity", {"command": "python benchmarks/export_parity.py " + args.checkpoint,
                                   "checkpoint": args.checkpoint, "rows": rows,
                                   "dorefa4_int8_refused": refused, "dorefa4_file_left": leftover})


if __name__ == "__main__":
    main()
