"""Wall-clock latency of a model call: warm-up, repeated timed runs, robust statistics.

`measure_latency(fn, example)` times any callable; `torch_latency` and `onnx_latency` wrap a
PyTorch model and an ONNX Runtime session.

Threads: PyTorch CPU inference uses `torch.get_num_threads()` intra-op threads; `torch_latency`
sets it for the measurement (and restores it afterwards) when `threads` is given. ONNX Runtime
sessions get the same number of intra-op threads unless told otherwise (see
`effdl.deploy.onnx.ort_session`). Every result records the thread count it ran with, because a
latency without its thread count cannot be compared. On a machine other processes keep busy,
multi-threaded timings mostly measure the scheduler (each operator waits until all its threads
run: resnet20 batch 1 took 480 ms with 2 threads against 5.4 ms with 1 on a loaded 2-core
machine), so compare single-threaded figures there. On CUDA, each timed call is followed by
`torch.cuda.synchronize()` so the time covers the kernels, not just their launch.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from effdl.core.modules import eval_mode
from effdl.errors import EffdlError


@dataclass(frozen=True)
class LatencyResult:
    """Latency of one call on a batch of `batch_size` inputs; times in milliseconds."""

    backend: str
    device: str
    batch_size: int
    threads: int
    repeats: int
    warmup: int
    median_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    p10_ms: float
    p90_ms: float
    times_ms: list[float] = field(repr=False)

    @property
    def iqr_ms(self) -> float:
        q1, _, q3 = statistics.quantiles(self.times_ms, n=4, method="inclusive")
        return q3 - q1

    @property
    def throughput(self) -> float:
        """Images per second at the median latency."""
        return self.batch_size / (self.median_ms / 1e3) if self.median_ms > 0 else float("inf")

    def to_dict(self, with_times: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not with_times:
            data.pop("times_ms")
        data["throughput"] = self.throughput
        return data


def measure_latency(
    fn: Callable[[Any], Any],
    example: Any,
    warmup: int = 5,
    repeats: int = 30,
    *,
    max_seconds: float | None = None,
    sync: Callable[[], None] | None = None,
    batch_size: int = 1,
    backend: str = "callable",
    device: str = "cpu",
    threads: int | None = None,
) -> LatencyResult:
    """Call `fn(example)` `warmup` times untimed, then time `repeats` calls one by one.

    `sync` runs after each call inside the timed region (e.g. to wait for a GPU). `max_seconds`
    stops the timed loop early once that much time has been spent (after at least 3 calls), so a
    slow model on a busy machine cannot stall a benchmark.
    """
    if repeats < 1 or warmup < 0:
        raise EffdlError(f"repeats must be >= 1 and warmup >= 0 (got repeats={repeats}, warmup={warmup})")
    for _ in range(warmup):
        fn(example)
    if sync:
        sync()
    times: list[float] = []
    started = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(example)
        if sync:
            sync()
        times.append((time.perf_counter() - t0) * 1e3)
        if max_seconds is not None and len(times) >= 3 and time.perf_counter() - started > max_seconds:
            break
    p10, p90 = np.percentile(times, [10, 90])
    return LatencyResult(
        backend=backend,
        device=device,
        batch_size=batch_size,
        threads=int(threads if threads is not None else torch.get_num_threads()),
        repeats=len(times),
        warmup=warmup,
        median_ms=float(statistics.median(times)),
        mean_ms=float(statistics.fmean(times)),
        std_ms=float(statistics.pstdev(times)),
        min_ms=float(min(times)),
        max_ms=float(max(times)),
        p10_ms=float(p10),
        p90_ms=float(p90),
        times_ms=times,
    )


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run the block with `threads` PyTorch intra-op threads (None: leave as is); yields the count."""
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise EffdlError(f"threads must be >= 1 (got {threads})")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def torch_latency(
    model: nn.Module,
    input_size: Sequence[int] = (1, 3, 32, 32),
    *,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    warmup: int = 5,
    repeats: int = 30,
    max_seconds: float | None = None,
) -> LatencyResult:
    """Latency of `model` (eval mode, no autograd) on a random batch of shape `input_size`.

    The model is moved to `device` (in place, as `nn.Module.to` does).
    """
    device = torch.device(device)
    model = model.to(device)
    example = torch.randn(*input_size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    with eval_mode(model), torch_threads(threads) as used, torch.inference_mode():
        return measure_latency(
            model,
            example,
            warmup,
            repeats,
            max_seconds=max_seconds,
            sync=sync,
            batch_size=int(input_size[0]),
            backend="pytorch",
            device=str(device),
            threads=used,
        )


def onnx_latency(
    onnx_file: str | Path,
    batch_size: int = 1,
    *,
    threads: int | None = None,
    warmup: int = 5,
    repeats: int = 30,
    max_seconds: float | None = None,
    session=None,
) -> LatencyResult:
    """Latency of an ONNX model in ONNX Runtime (CPUExecutionProvider) on a random batch.

    Pass an existing `session` to reuse it; otherwise one is made with `threads` intra-op threads.
    """
    from effdl.deploy.onnx import onnx_input_shape, ort_session

    session = session or ort_session(onnx_file, threads=threads)
    used = int(session.get_session_options().intra_op_num_threads)
    input_name = session.get_inputs()[0].name
    example = np.random.default_rng(0).standard_normal(onnx_input_shape(session, batch_size)).astype(np.float32)
    return measure_latency(
        lambda x: session.run(None, {input_name: x}),
        example,
        warmup,
        repeats,
        max_seconds=max_seconds,
        batch_size=int(example.shape[0]),
        backend="onnxruntime",
        device="cpu",
        threads=used,
    )
