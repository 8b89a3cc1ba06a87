"""The job behind `effdl bench`: latency and throughput of a checkpoint (or model name) in PyTorch and
ONNX Runtime, and its sizes on disk.

`bench_checkpoint(source, BenchOptions(...))` times the model on random batches in PyTorch (on the
CPU, and the GPU too when `device="auto"` finds one) and, with `onnx`, its fp32 ONNX export in ONNX
Runtime after checking it against PyTorch (effdl.deploy.bench). With `int8` it also exports the
int8 QDQ model (a float checkpoint calibrated on training images, as `effdl export --int8` does),
checks it against the PyTorch fake-quant model and times it next to the fp32 export, as backend
"onnxruntime-int8". It returns what `effdl bench --json` prints. Timings are measured, never
declared; `load_average` and `machine_busy` say when other work made them unreliable.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effdl.errors import EffdlError
from effdl.pipelines.export import Int8Options, check_images, int8_export_model
from effdl.pipelines.sources import check_input_size, check_positive, load_source

if TYPE_CHECKING:
    import torch
    from torch import nn

    from effdl.deploy.bench import BenchResult

INT8_BACKEND = "onnxruntime-int8"


@dataclass(kw_only=True)
class BenchOptions(Int8Options):
    """What `effdl bench` does; see `effdl bench --help` for each option."""

    batch_sizes: list[int] = field(default_factory=lambda: [1, 64])
    onnx: bool = True  # also export to ONNX, check it and time it in ONNX Runtime
    threads: int | None = None  # intra-op CPU threads for PyTorch and ONNX Runtime; None: torch's setting
    repeats: int = 30  # timed runs per measurement
    warmup: int = 5  # untimed runs first
    max_seconds: float = 20.0  # cap on each timed loop
    device: str = "auto"  # cpu, cuda, cuda:N, or auto (the CPU, and the GPU as well when there is one)
    input_size: list[int] | None = None  # C,H,W; None: the model's own

    def validate(self) -> None:
        """EffdlError (one line) for a value that cannot work."""
        self.validate_int8()
        if not self.batch_sizes:
            raise EffdlError("batch_sizes must name at least one batch size")
        for size in self.batch_sizes:
            check_positive(size, "each batch size")
        check_positive(self.threads, "threads", optional=True)
        check_positive(self.repeats, "repeats")
        check_positive(self.warmup, "warmup", minimum=0)
        if isinstance(self.max_seconds, bool) or not isinstance(self.max_seconds, (int, float)) or not self.max_seconds > 0:
            raise EffdlError(f"max_seconds must be a positive number of seconds, got {self.max_seconds!r}")
        check_input_size(self.input_size)
        if not isinstance(self.device, str) or not self.device:
            raise EffdlError(f"device must be cpu, cuda, cuda:N or auto, got {self.device!r}")


@dataclass
class BenchReport:
    """What `bench_model` measured: the latencies and sizes, and the int8 export's figures."""

    name: str
    result: BenchResult
    int8: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The dict `effdl bench --json` prints."""
        return {"model": self.name, **self.result.to_dict(), "int8": self.int8}


def _devices(device: str) -> list[torch.device]:
    """auto: the CPU, and the GPU as well when there is one; a named device: that device only."""
    from effdl.device import resolve_device

    devices = [resolve_device(device)]
    if device == "auto" and devices[0].type != "cpu":
        devices.insert(0, resolve_device("cpu"))
    return devices


def bench_model(
    model: nn.Module, meta: dict[str, Any], options: BenchOptions, out_dir: str | Path | None = None, *,
    name: str = "model", checkpoint: str | Path | None = None,
) -> BenchReport:
    """Benchmark an already loaded `model` (checkpoint metadata `meta`, {} for none) as
    `bench_checkpoint` does; `name` labels the report, `checkpoint` (a file) adds its size."""
    from effdl.deploy.bench import benchmark_model
    from effdl.measure.counting import profile
    from effdl.models.registry import model_input_size

    options.validate()
    devices = _devices(options.device)
    shape = tuple(options.input_size) if options.input_size else model_input_size(model)  # the trained size
    # Calibrate before timing anything: a missing dataset should fail fast.
    int8 = int8_export_model(model, meta, options) if options.int8 else None
    images = check_images(int8 if int8 is not None else model, meta, options)
    counted_bytes = profile(model, (1, *shape)).size_bytes
    result = benchmark_model(
        model, shape, options.batch_sizes, onnx=options.onnx, onnx_dir=out_dir, devices=devices,
        threads=options.threads, warmup=options.warmup, repeats=options.repeats, max_seconds=options.max_seconds,
        check_images=images,
    )
    if checkpoint is not None and Path(checkpoint).is_file():
        result.sizes["checkpoint_bytes"] = Path(checkpoint).stat().st_size
    result.sizes["counted_bytes"] = counted_bytes
    if result.onnx_bytes is not None:
        result.sizes["onnx_bytes"] = result.onnx_bytes
    int8_report = _time_int8(int8, result, shape, options, out_dir, images) if int8 is not None else None
    return BenchReport(name, result, int8_report)


def bench_checkpoint(source: str | Path, options: BenchOptions, out_dir: str | Path | None = None, *,
                     num_classes: int = 10) -> dict[str, Any]:
    """Time checkpoint or registered model name `source` in PyTorch and ONNX Runtime (module docstring).

    `out_dir` keeps the ONNX files (model.onnx, model-int8.onnx; default: a temporary folder,
    removed); `num_classes` sizes a model built from a name. Returns {"model", "input_shape",
    "onnx": {"path", "bytes", "max_abs_diff"} or None, "sizes": {checkpoint_bytes, counted_bytes,
    onnx_bytes, int8_onnx_bytes: bytes}, "load_average", "latency": [{backend, device, threads,
    batch_size, median_ms, p10_ms, p90_ms, throughput (images/s)...}], "onnx_speedup": {batch: eager
    / ONNX Runtime}, "int8": None or {"max_abs_diff", "check", "bytes", "speedup_vs_fp32_onnx"}}.
    Raises EffdlError for bad options, a missing checkpoint or dataset, or an export that fails its check.
    """
    options.validate()
    model, meta = load_source(source, num_classes)
    return bench_model(model, meta, options, out_dir, name=str(source), checkpoint=source).to_dict()


def _time_int8(model: nn.Module, result: BenchResult, shape: tuple[int, ...], options: BenchOptions,
               out_dir: str | Path | None, images: torch.Tensor | None = None) -> dict[str, Any]:
    """Export `model` (int8 fake-quant) to int8 ONNX, check it on `images` (None: random inputs),
    and add its latencies to `result`."""
    from effdl.deploy.int8 import export_int8_verified
    from effdl.deploy.onnx import ort_session
    from effdl.measure.latency import onnx_latency

    with tempfile.TemporaryDirectory(prefix="effdl-bench-") as tmp:
        model = model.cpu()  # the PyTorch timings may have moved it to a GPU
        path, check, _ = export_int8_verified(model, Path(out_dir or tmp) / "model-int8.onnx", input_size=shape,
                                              check_images=images)
        session = ort_session(path, threads=options.threads)
        for b in options.batch_sizes:
            timed = onnx_latency(path, b, session=session, warmup=options.warmup, repeats=options.repeats,
                                 max_seconds=options.max_seconds)
            result.latencies.append(dataclasses.replace(timed, backend=INT8_BACKEND))
        result.sizes["int8_onnx_bytes"] = path.stat().st_size
    return {"max_abs_diff": check.max_abs_diff, "check": check.summary(), "bytes": result.sizes["int8_onnx_bytes"],
            "speedup_vs_fp32_onnx": {str(b): r for b, r in int8_speedups(result).items()}}


def int8_speedups(result: BenchResult) -> dict[int, float]:
    """Per batch size: fp32 ONNX Runtime median latency / int8 ONNX Runtime median latency."""
    ratios = {}
    for r in result.latencies:
        fp32 = result.latency("onnxruntime", r.batch_size) if r.backend == INT8_BACKEND else None
        if fp32 is not None:
            ratios[r.batch_size] = fp32.median_ms / r.median_ms
    return ratios

