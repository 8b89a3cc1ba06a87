"""PyTorch eager against its ONNX Runtime export: export, verify outputs, then time both.

`benchmark_model` is what `effdl bench` and `benchmarks/latency.py` run. The ONNX file is checked
against PyTorch before it is timed, so a fast but wrong export is never reported.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from effdl.deploy.onnx import export_verified, ort_session
from effdl.errors import EffdlError
from effdl.measure.latency import LatencyResult, onnx_latency, torch_latency
from effdl.models.registry import model_input_size


@dataclass
class BenchResult:
    """Latencies per backend and batch size, the ONNX check and the sizes on disk."""

    input_shape: tuple[int, ...]
    latencies: list[LatencyResult]
    onnx_path: str | None = None
    onnx_bytes: int | None = None
    onnx_max_abs_diff: float | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    load_average: float | None = None  # 1-minute system load when timing started (None: unknown)

    @property
    def machine_busy(self) -> bool:
        """True when other processes kept every core busy: the timings are then unreliable."""
        return self.load_average is not None and self.load_average > (os.cpu_count() or 1)

    def latency(self, backend: str, batch_size: int, device: str | None = None) -> LatencyResult | None:
        """The first result for `backend` at `batch_size` (on `device`, if given)."""
        return next(
            (r for r in self.latencies
             if r.backend == backend and r.batch_size == batch_size and device in (None, r.device)),
            None,
        )

    def onnx_speedups(self) -> dict[int, float]:
        """Per batch size: PyTorch CPU median latency / ONNX Runtime median latency."""
        ratios = {}
        for r in self.latencies:
            if r.backend != "onnxruntime":
                continue
            eager = self.latency("pytorch", r.batch_size, device="cpu")
            if eager is not None:
                ratios[r.batch_size] = eager.median_ms / r.median_ms
        return ratios

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "onnx": None
            if self.onnx_bytes is None
            else {"path": self.onnx_path, "bytes": self.onnx_bytes, "max_abs_diff": self.onnx_max_abs_diff},
            "sizes": self.sizes,
            "load_average": self.load_average,
            "latency": [r.to_dict() for r in self.latencies],
            "onnx_speedup": {str(b): v for b, v in self.onnx_speedups().items()},
        }


def benchmark_model(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    batch_sizes: Sequence[int] = (1, 64),
    *,
    onnx: bool = True,
    onnx_dir: str | Path | None = None,
    devices: Sequence[str | torch.device] = ("cpu",),
    threads: int | None = None,
    warmup: int = 5,
    repeats: int = 30,
    max_seconds: float | None = 20.0,
    check_images: torch.Tensor | None = None,
) -> BenchResult:
    """Time `model` on random batches of each size in PyTorch (on each of `devices`) and ONNX Runtime (CPU).

    `input_shape` (C, H, W) defaults to the model's own (`model_input_size`). The ONNX export goes
    to `onnx_dir` (a temporary folder, removed afterwards, when None) and is verified first
    (`verify_onnx`, on `check_images` if given, else random inputs). `max_seconds` caps each timed loop.
    """
    if not batch_sizes or min(batch_sizes) < 1:
        raise EffdlError(f"batch sizes must be positive integers (got {list(batch_sizes)})")
    input_shape = tuple(int(d) for d in (input_shape if input_shape is not None else model_input_size(model)))
    model.eval()
    result = BenchResult(input_shape=input_shape, latencies=[])
    timing = dict(threads=threads, warmup=warmup, repeats=repeats, max_seconds=max_seconds)
    with tempfile.TemporaryDirectory(prefix="effdl-bench-") as tmp:
        session = None
        if onnx:
            # Exported and checked on CPU: ONNX Runtime runs on the CPU provider.
            model.cpu()
            path, check = export_verified(model, Path(onnx_dir or tmp) / "model.onnx", images=check_images,
                                          input_size=input_shape)
            result.onnx_path = str(path) if onnx_dir else None
            result.onnx_bytes = path.stat().st_size
            result.onnx_max_abs_diff = check.max_abs_diff
            session = ort_session(path, threads=threads)
        result.load_average = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        for b in batch_sizes:
            for device in devices:
                result.latencies.append(torch_latency(model, (b, *input_shape), device=device, **timing))
            if session is not None:
                result.latencies.append(onnx_latency(path, b, session=session, **timing))
    return result


def onnx_deploy_latency(model: nn.Module, input_size: Sequence[int], threads: int | None = 1) -> tuple[float, str, int]:
    """Median batch-1 ONNX Runtime latency (ms) of `model` as it would be deployed, the graph timed
    ("fp32"; "int8" for a model quantized on grids int8 QDQ expresses; "fp32 fake-quant" for other
    quantized models, whose float graph computes the fake-quant arithmetic) and the threads used.

    The file is exported to a temporary folder without the export check: this is a timing, the
    export stage (effdl.deploy.onnx.verify_onnx) is where a graph is verified.
    """
    from effdl.compress.quantize import is_quantized
    from effdl.deploy.int8 import export_int8_onnx
    from effdl.deploy.onnx import export_onnx

    model = model.cpu().eval()
    with tempfile.TemporaryDirectory(prefix="effdl-latency-") as tmp:
        path, graph = Path(tmp) / "model.onnx", "fp32"
        if is_quantized(model):
            try:
                export_int8_onnx(model, path, verify=False, input_size=input_size)
                graph = "int8"
            except EffdlError:
                graph = "fp32 fake-quant"
        if graph != "int8":
            export_onnx(model, path, input_size)
        timed = onnx_latency(path, 1, threads=threads, warmup=5, repeats=50, max_seconds=5.0)
    return timed.median_ms, graph, timed.threads
