"""ONNX export of a PyTorch model, atomic saving, ONNX Runtime sessions and output verification.

Exporter choice (torch 2.14), measured on our models:
- `dynamo` (`torch.onnx.export(..., dynamo=True)`, built on torch.export; the default since
  PyTorch 2.9) is tried first. It handles everything the legacy exporter does on our ResNets and
  torchvision's MobileNetV2/ShuffleNetV2/EfficientNet/DenseNet with identical outputs, plus
  models the legacy one rejects (torchvision VGG at 32x32: adaptive pooling to a size that does
  not divide the input). It is slow, though: 5-30 s per model on a 2-core CPU.
- `torchscript` (the legacy tracer, deprecated: it warns that it will be removed) is the fallback
  when torch.export cannot capture the model, which happens with data-dependent Python control
  flow (e.g. a quantizer reading a buffer as a bool), or when the dynamo exporter's graph fails
  `onnx.checker` (it has dropped nodes of sign activations after a ReLU): tracing simply records
  the branch taken on the example input. It is 10-30x faster.
`exporter="auto"` does exactly that and records which exporter produced the file in the model's
metadata (`effdl.exporter`); `check_onnx` then verifies the result against PyTorch either way.
Weights are embedded in one self-contained .onnx file (no external data), which bounds a model to
the 2 GB protobuf limit, far above any CIFAR-sized network.

Export is split in three steps so later work (e.g. int8 QDQ export) can hook in between:
`onnx_model(model)` builds the graph in memory, an optional `postprocess(ModelProto) -> ModelProto`
rewrites it, and `save_onnx` writes it atomically. `export_onnx` chains the three.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from effdl.errors import EffdlError, unknown_name_error
from effdl.fileio import atomic_write
from effdl.measure.bits import declared_weight_bits

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_INPUT_SIZE = (1, 3, 32, 32)

OnnxPostprocess = Callable[[onnx.ModelProto], onnx.ModelProto]


def _model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


@contextlib.contextmanager
def _quietly() -> Iterator[None]:
    """Silence what the exporters print (progress, warnings, graphs dumped on failure): a CLI shows one line."""
    previous = logging.root.manager.disable
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        logging.disable(logging.CRITICAL)
        try:
            yield
        finally:
            logging.disable(previous)


def _failure_reason(exc: BaseException) -> str:
    """The first line of the innermost cause: the exporters wrap the real reason in generic errors."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    line = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    return re.sub(r"\x1b\[[0-9;]*m", "", line)


def _export_dynamo(
    model: nn.Module, example: torch.Tensor, dynamic_batch: bool, opset: int | None
) -> onnx.ModelProto:
    program = torch.onnx.export(
        model, (example,), None, dynamo=True, verbose=False, external_data=False, opset_version=opset,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamic_batch else None,
    )
    return program.model_proto


def _export_torchscript(
    model: nn.Module, example: torch.Tensor, dynamic_batch: bool, opset: int | None
) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(
        model, (example,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None,
    )
    return onnx.load_from_string(buffer.getvalue())


EXPORTERS = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}


def onnx_model(
    model: nn.Module,
    input_size: Sequence[int] = DEFAULT_INPUT_SIZE,
    *,
    dynamic_batch: bool = True,
    opset: int | None = None,
    exporter: str = "auto",
) -> onnx.ModelProto:
    """The ONNX graph of `model` in eval mode, captured on a random input of `input_size` (NCHW).

    With `dynamic_batch` the first input dimension is symbolic ("batch"), so one file serves
    batch-1 and batch-N inference. `exporter`: "auto" (dynamo, else torchscript; see the module
    docstring), "dynamo" or "torchscript".
    """
    if exporter != "auto" and exporter not in EXPORTERS:
        raise unknown_name_error("ONNX exporter", exporter, ["auto", *EXPORTERS])
    example = torch.randn(*input_size, device=_model_device(model))
    was_training = model.training
    model.eval()
    failures = []
    try:
        for name in EXPORTERS if exporter == "auto" else [exporter]:
            try:
                with _quietly():
                    proto = EXPORTERS[name](model, example, dynamic_batch, opset)
                # The dynamo exporter can return a graph that reads values no node produces (seen on
                # sign activations after a ReLU): an invalid graph is a failed export.
                onnx.checker.check_model(proto)
            except Exception as exc:  # the exporters raise many unrelated types; keep each reason
                failures.append(f"{name}: {_failure_reason(exc)}")
                continue
            onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                                "effdl.exporter": name})
            return proto
    finally:
        model.train(was_training)
    raise EffdlError(f"ONNX export of {type(model).__name__} failed ({'; '.join(failures)})")


def save_onnx(proto: onnx.ModelProto, path: str | Path) -> Path:
    """Write `proto` to `path` atomically."""
    return atomic_write(path, lambda tmp: onnx.save_model(proto, tmp))


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: Sequence[int] = DEFAULT_INPUT_SIZE,
    dynamic_batch: bool = True,
    opset: int | None = None,
    postprocess: OnnxPostprocess | None = None,
    exporter: str = "auto",
) -> Path:
    """Export `model` to the ONNX file `path` (written atomically) and return the path.

    `postprocess` may rewrite the graph before it is saved (e.g. to insert quantization nodes).
    """
    proto = onnx_model(model, input_size, dynamic_batch=dynamic_batch, opset=opset, exporter=exporter)
    if postprocess is not None:
        proto = postprocess(proto)
    return save_onnx(proto, path)


def ort_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session for `path`, with `threads` intra-op threads (default: torch's).

    The default matches `torch.get_num_threads()` so PyTorch and ONNX Runtime timings compare like
    with like; inter-op parallelism stays at 1 (our graphs are sequential).
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise EffdlError(f"ONNX file not found: {path}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EffdlError(f"{path} is not a runnable ONNX model: {first_line}") from None


def onnx_input_shape(session, batch_size: int) -> tuple[int, ...]:
    """The input shape of `session` with its symbolic (batch) dimensions set to `batch_size`."""
    shape = session.get_inputs()[0].shape
    return tuple(d if isinstance(d, int) else batch_size for d in shape)


def default_tolerance(model: nn.Module) -> tuple[float, float]:
    """(atol, rtol) for comparing an export with `model`.

    Float graphs agree to float rounding. In a quantized model one value landing on the other side
    of a rounding boundary moves by a whole quantization step, so bit-exactness cannot be required;
    gross errors (wrong scales, missing layers) still fail.
    """
    quantized = any(declared_weight_bits(m) is not None for m in model.modules())
    return (1e-2, 1e-2) if quantized else (1e-4, 1e-3)


def check_onnx(
    model: nn.Module,
    path: str | Path,
    n: int = 8,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
) -> float:
    """Run the ONNX file and `model` on the same random batch of `n` inputs; return the max abs diff.

    Raises EffdlError when any output differs by more than `atol + rtol * |torch output|`.
    The default tolerance is tight for float models and looser for quantized ones (see
    `default_tolerance`). A file exported with a fixed batch size is checked at that batch size.
    """
    default_atol, default_rtol = default_tolerance(model)
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    session = ort_session(path)
    shape = onnx_input_shape(session, n)
    inputs = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(inputs.to(_model_device(model))).float().cpu().numpy()
    finally:
        model.train(was_training)
    got = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]
    if got.shape != expected.shape:
        raise EffdlError(f"ONNX output shape {got.shape} differs from PyTorch's {expected.shape} ({path})")
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    max_diff = float(diff.max()) if diff.size else 0.0
    if not np.all(diff <= atol + rtol * np.abs(expected)) or not np.isfinite(max_diff):
        raise EffdlError(
            f"ONNX output differs from PyTorch: max abs diff {max_diff:.3g} "
            f"(tolerance atol={atol:g}, rtol={rtol:g}) for {path}"
        )
    return max_diff

