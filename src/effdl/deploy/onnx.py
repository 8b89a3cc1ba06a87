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
rewrites it, and `save_onnx` writes it atomically. `export_onnx` chains the three;
`export_verified` also runs the written file against PyTorch before it takes the asked-for name
(a rejected file is deleted, never left where the user wanted the model).

Every file records the model's input size (the exported one) and, when the model carries its data
record (`effdl.models.registry.data_meta`), the mean, std, class names, dataset and resize policy,
as JSON values of metadata_props keys `effdl.input_size`, `effdl.mean`, ... The input size
defaults to the model's own (`model_input_size`); the batch axis is symbolic unless asked otherwise.
A model may return a tensor or any structure of tensors (tuple, dict): the graph's outputs are its
leaves in `torch.utils._pytree` order, which is the order both exporters write them.

Verification (`verify_onnx`) has two rules. Float graphs must agree with PyTorch to float
rounding (atol 1e-4, rtol 1e-3) on any input, so random inputs do. Graphs of quantized models
(fake-quant float graphs and int8 QDQ graphs) round: an activation on the other side of a
rounding boundary moves by a whole step, and ONNX Runtime's integer kernels requantize with their
own arithmetic, so bit-exactness is the wrong question. They are judged on what matters, on real
images (random noise is not what the model sees): the top-1 predictions must agree (at least
`MIN_AGREEMENT` of the images, or only near-ties may flip), the median output may move by at most
`MEDIAN_STEPS` steps of the output's int8 grid (step = max |PyTorch output| / 127) and no output by
more than `MAX_STEPS` of them. A model whose coarsest activation grid has k < 8 bits is allowed
`MAX_STEPS * 2**(8 - k)` on the largest error: one flip in a k-bit grid moves a value as far as
2**(8 - k) int8 steps, and a few images meet such flips (a 4-bit resnet20: median 1.2 steps, 99th
percentile 9.6, max 15.7 on 256 images, ONNX Runtime's test accuracy 0.08 point from PyTorch's).
The median bound is not scaled: an export error (a wrong scale or zero point) moves most outputs,
rounding flips only a few.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from torch.utils import _pytree as pytree

from effdl.core.modules import eval_mode, output_leaves
from effdl.errors import EffdlError, unknown_name_error
from effdl.fileio import atomic_write
from effdl.measure.bits import act_bits, has_quantized_layers
from effdl.models.registry import data_meta, example_input_shape, model_input_size

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_INPUT_SIZE = (1, 3, 32, 32)  # NCHW of a model that records no input size (kept for old callers)
DATA_KEYS = ("dataset", "mean", "std", "classes", "resize")  # data record entries copied to metadata_props

# Verification of graphs that round (see the module docstring).
FLOAT_TOLERANCE = (1e-4, 1e-3)  # (atol, rtol)
MIN_AGREEMENT = 0.95  # top-1 agreement with PyTorch; below it only near-ties (gap <= 2 steps) may flip
MAX_STEPS = 8.0  # max |ONNX - PyTorch| in steps of the output's int8 grid (max |output| / 127), at 8 bits
MEDIAN_STEPS = 2.0  # median |ONNX - PyTorch| in those steps, at any bit-width
CHECK_IMAGES = 256  # images the CLI checks a quantized export on

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


def output_names(output: Any) -> list[str]:
    """Graph output names for a model's output: "logits" for one tensor, else one per leaf from its
    place in the structure ("aux_0" for output["aux"][0]), unique."""
    leaves = [(path, leaf) for path, leaf in pytree.tree_flatten_with_path(output)[0] if isinstance(leaf, torch.Tensor)]
    if len(leaves) == 1:
        return [OUTPUT_NAME]
    names: list[str] = []
    for index, (path, _) in enumerate(leaves):
        name = re.sub(r"[^A-Za-z0-9]+", "_", pytree.keystr(path)).strip("_")
        name = f"output_{name}" if not name or name[0].isdigit() else name
        names.append(name if name not in names else f"{name}_{index}")
    return names


def _export_dynamo(
    model: nn.Module, example: torch.Tensor, dynamic_batch: bool, opset: int | None, outputs: list[str]
) -> onnx.ModelProto:
    program = torch.onnx.export(
        model, (example,), None, dynamo=True, verbose=False, external_data=False, opset_version=opset,
        input_names=[INPUT_NAME], output_names=outputs,
        dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamic_batch else None,
    )
    return program.model_proto


def _export_torchscript(
    model: nn.Module, example: torch.Tensor, dynamic_batch: bool, opset: int | None, outputs: list[str]
) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(
        model, (example,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
        output_names=outputs,
        dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]} if dynamic_batch else None,
    )
    return onnx.load_from_string(buffer.getvalue())


EXPORTERS = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}


def onnx_metadata(model: nn.Module, input_shape: Sequence[int]) -> dict[str, str]:
    """metadata_props for a file of `model` exported at `input_shape` (NCHW): `effdl.input_size`
    ([C, H, W]) and the model's data record (`effdl.dataset`, `effdl.mean`, `effdl.std`,
    `effdl.classes`, `effdl.resize`), each a JSON value, so a runtime knows how to feed it."""
    props = {"effdl.input_size": json.dumps([int(d) for d in input_shape[1:]])}
    for key, value in (data_meta(model) or {}).items():
        if key in DATA_KEYS:
            props[f"effdl.{key}"] = json.dumps(value)
    return props


_STORAGE_NAMES = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16",
                  onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.DOUBLE: "fp64"}


def weight_storage(path: str | Path) -> str:
    """The element type holding most of an ONNX file's weight values (its initializers), read from
    the file: "fp32", "fp16", "bf16", "int8"... ("none" for a graph without initializers)."""
    counts: dict[str, int] = {}
    for init in onnx.load(str(path), load_external_data=False).graph.initializer:
        name = _STORAGE_NAMES.get(init.data_type, onnx.TensorProto.DataType.Name(init.data_type).lower())
        counts[name] = counts.get(name, 0) + int(np.prod(init.dims, dtype=np.int64))
    return max(counts, key=counts.get) if counts else "none"


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The effdl entries of an ONNX file's metadata_props, decoded: {"input_size": [3, 32, 32], ...}."""
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    decoded: dict[str, Any] = {}
    for key, value in props.items():
        if key.startswith("effdl."):
            try:
                decoded[key.removeprefix("effdl.")] = json.loads(value)
            except ValueError:  # "effdl.exporter" and other plain strings
                decoded[key.removeprefix("effdl.")] = value
    return decoded


def onnx_model(
    model: nn.Module,
    input_size: Sequence[int] | None = None,
    *,
    dynamic_batch: bool = True,
    opset: int | None = None,
    exporter: str = "auto",
) -> onnx.ModelProto:
    """The ONNX graph of `model` in eval mode, captured on a random input of `input_size`.

    `input_size`: (C, H, W) or (N, C, H, W); default the model's own (`model_input_size`). With
    `dynamic_batch` the first dimension of the input and of every output is symbolic ("batch"),
    so one file serves batch-1 and batch-N inference. `exporter`: "auto" (dynamo, else
    torchscript; see the module docstring), "dynamo" or "torchscript". The model's data record
    and the exporter used go into metadata_props (`onnx_metadata`, `effdl.exporter`).
    """
    if exporter != "auto" and exporter not in EXPORTERS:
        raise unknown_name_error("ONNX exporter", exporter, ["auto", *EXPORTERS])
    shape = example_input_shape(model, input_size)
    example = torch.randn(*shape, device=_model_device(model))
    failures = []
    with eval_mode(model):
        try:
            with torch.no_grad():
                outputs = output_names(model(example))
        except Exception as exc:  # a model that cannot run cannot be exported; say why in one line
            raise EffdlError(f"ONNX export of {type(model).__name__} failed (it cannot run on an input of "
                             f"shape {list(shape)}: {_failure_reason(exc)})") from None
        for name in EXPORTERS if exporter == "auto" else [exporter]:
            try:
                with _quietly():
                    proto = EXPORTERS[name](model, example, dynamic_batch, opset, outputs)
                # The dynamo exporter can return a graph that reads values no node produces (seen on
                # sign activations after a ReLU): an invalid graph is a failed export.
                onnx.checker.check_model(proto)
            except Exception as exc:  # the exporters raise many unrelated types; keep each reason
                failures.append(f"{name}: {_failure_reason(exc)}")
                continue
            onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                                **onnx_metadata(model, shape), "effdl.exporter": name})
            return proto
    raise EffdlError(f"ONNX export of {type(model).__name__} failed ({'; '.join(failures)})")


def save_onnx(proto: onnx.ModelProto, path: str | Path) -> Path:
    """Write `proto` to `path` atomically."""
    return atomic_write(path, lambda tmp: onnx.save_model(proto, tmp))


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: Sequence[int] | None = None,
    dynamic_batch: bool = True,
    opset: int | None = None,
    postprocess: OnnxPostprocess | None = None,
    exporter: str = "auto",
) -> Path:
    """Export `model` to the ONNX file `path` (written atomically, not verified) and return the path.

    `input_size` as in `onnx_model` (default: the model's own). `postprocess` may rewrite the
    graph before it is saved (e.g. to insert quantization nodes). `export_verified` also checks it.
    """
    proto = onnx_model(model, input_size, dynamic_batch=dynamic_batch, opset=opset, exporter=exporter)
    if postprocess is not None:
        proto = postprocess(proto)
    return save_onnx(proto, path)


def export_verified(
    model: nn.Module,
    path: str | Path,
    *,
    reference: nn.Module | None = None,
    images: torch.Tensor | None = None,
    input_size: Sequence[int] | None = None,
    dynamic_batch: bool = True,
    opset: int | None = None,
    postprocess: OnnxPostprocess | None = None,
    exporter: str = "auto",
) -> tuple[Path, OnnxCheck]:
    """Export `model` to `path`, verify the file against `reference` (default `model`) with
    `verify_onnx` on `images`, and only then give it the name `path`; returns (path, check).

    The file is written and run under a temporary name beside `path`: when the check fails it is
    deleted and an EffdlError says why, and an existing file at `path` is left untouched.
    """
    proto = onnx_model(model, input_size, dynamic_batch=dynamic_batch, opset=opset, exporter=exporter)
    if postprocess is not None:
        proto = postprocess(proto)
    checks: list[OnnxCheck] = []

    def write_and_check(tmp: str) -> None:
        onnx.save_model(proto, tmp)
        try:
            checks.append(verify_onnx(reference if reference is not None else model, tmp, images))
        except EffdlError as exc:
            raise EffdlError(f"{exc} (nothing written to {path})") from None

    return atomic_write(path, write_and_check), checks[0]


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


def rounds(model: nn.Module) -> bool:
    """True when `model` computes on a grid coarser than float32 (quantized layers, half precision):
    its exports are judged on predictions and grid steps rather than float tolerance."""
    quantized = has_quantized_layers(model)
    return quantized or getattr(model, "effdl_half_dtype", None) is not None


@dataclass(frozen=True)
class OnnxCheck:
    """How an ONNX file compared with PyTorch (see `verify_onnx`).

    `inputs`: "images" (the images passed in) or "random" (standard normal noise);
    `agreement`: fraction of inputs with the same top-1 class, over every 2-D output;
    `step`: the output grid step the error is measured in (None for the float rule);
    `max_steps`: max abs diff / step; `median_steps`: the median one; `limit_steps`: the bound on
    `max_steps` for this model (`step_limit`). `note` says what a reader should know (e.g. random inputs).
    """

    max_abs_diff: float
    count: int
    inputs: str
    rule: str  # "float" or "quantized"
    agreement: float | None = None
    step: float | None = None
    max_steps: float | None = None
    note: str = ""
    median_steps: float | None = None
    limit_steps: float = MAX_STEPS

    def summary(self) -> str:
        """One line for a command's output."""
        on = f"{self.count} {'images' if self.inputs == 'images' else 'random inputs'}"
        if self.rule == "float":
            text = f"max abs diff {self.max_abs_diff:.2e} on {on}"
        else:
            text = (f"top-1 agreement {self.agreement:.2%} on {on}, max abs diff "
                    f"{self.max_abs_diff:.3g} = {self.max_steps:.2f} output steps (max |output| / 127) "
                    f"(limit {self.limit_steps:g}), median {self.median_steps or 0:.2f} steps (limit {MEDIAN_STEPS:g})")
        return f"{text}; {self.note}" if self.note else text


def _run_both(model: nn.Module, session, inputs: torch.Tensor) -> tuple[list[np.ndarray], list[np.ndarray]]:
    with eval_mode(model), torch.no_grad():
        expected = [t.detach().float().cpu().numpy() for t in output_leaves(model(inputs.to(_model_device(model))))]
    got = session.run(None, {session.get_inputs()[0].name: inputs.cpu().float().numpy()})
    return expected, got


def step_limit(model: nn.Module) -> float:
    """The bound on the largest error, in output steps, for `model`: MAX_STEPS, scaled by
    2**(8 - k) when its coarsest quantized activation grid has k < 8 bits (read from its layers)."""
    coarsest = min((act_bits(m) for m in model.modules() if getattr(m, "act_bits", None) is not None), default=8)
    return MAX_STEPS * 2 ** max(0, 8 - coarsest)


def _agreement(expected: np.ndarray, got: np.ndarray, step: float) -> tuple[float, bool]:
    """(top-1 agreement, whether every flip is a near-tie: PyTorch's gap between the two classes
    is at most 2 steps, so two outputs each one step off could swap them)."""
    torch_top, onnx_top = expected.argmax(1), got.argmax(1)
    flipped = np.nonzero(torch_top != onnx_top)[0]
    gaps = expected[flipped, torch_top[flipped]] - expected[flipped, onnx_top[flipped]]
    return 1.0 - len(flipped) / len(expected), bool(np.all(gaps <= 2 * step))


def verify_onnx(
    model: nn.Module,
    path: str | Path,
    images: torch.Tensor | None = None,
    *,
    n: int = 8,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
) -> OnnxCheck:
    """Run the ONNX file and `model` on the same inputs and judge the export; EffdlError if it fails.

    `images`: normalised NCHW images as the model sees them (e.g. `calibration_images`); without
    them `n` standard-normal inputs are used, and the result's note says so. A file exported with
    a fixed batch size is run one input at a time. Outputs of any structure are compared leaf by
    leaf (`output_leaves`). Rules (module docstring):
    - float models: every output within `atol + rtol * |torch|` (default 1e-4, 1e-3);
    - models that round (`rounds`): top-1 agreement >= MIN_AGREEMENT on every 2-D output (or every
      flip a near-tie), and max abs diff <= MAX_STEPS steps, a step being max |PyTorch output| / 127.
      `atol` / `rtol`, when given, replace this by the float rule with that tolerance.
    """
    session = ort_session(path)
    shape = session.get_inputs()[0].shape
    if images is not None:
        fixed = [(d, i) for d, i in zip(shape[1:], images.shape[1:]) if isinstance(d, int)]
        if len(images.shape) != len(shape) or any(d != i for d, i in fixed):
            raise EffdlError(
                f"the images to check {path} on are {'x'.join(map(str, images.shape[1:]))} but it takes "
                f"{'x'.join(str(d) for d in shape[1:])}: bring the data to the model's size with --image-size "
                "(or export at the data's with --input-size)"
            )
        inputs, kind, note = images, "images", ""
    else:  # at the file's own input size (it may have been exported at an overriding one)
        size = [d if isinstance(d, int) else m for d, m in zip(shape[1:], model_input_size(model))]
        inputs = torch.randn(n, *size, generator=torch.Generator().manual_seed(seed))
        kind, note = "random", ""
    fixed_batch = isinstance(shape[0], int)
    if fixed_batch and shape[0] != 1 and len(inputs) % shape[0]:
        inputs = inputs[: len(inputs) // shape[0] * shape[0]]
    if len(inputs) == 0:
        raise EffdlError(f"no inputs to check {path} on")
    batch = shape[0] if fixed_batch else len(inputs)
    expected_parts, got_parts = [], []
    for start in range(0, len(inputs), batch):
        e, g = _run_both(model, session, inputs[start : start + batch])
        expected_parts.append(e)
        got_parts.append(g)
    expected = [np.concatenate(leaf) for leaf in zip(*expected_parts)]
    got = [np.concatenate(leaf) for leaf in zip(*got_parts)]
    if len(got) != len(expected):
        raise EffdlError(f"ONNX file {path} has {len(got)} outputs, the PyTorch model {len(expected)}")
    for index, (g, e) in enumerate(zip(got, expected)):
        if g.shape != e.shape:
            raise EffdlError(f"ONNX output {index} has shape {g.shape}, PyTorch's {e.shape} ({path})")
    diffs = [np.abs(g.astype(np.float64) - e.astype(np.float64)) for g, e in zip(got, expected)]
    max_diff = max((float(d.max()) for d in diffs if d.size), default=0.0)
    if not np.isfinite(max_diff) or not all(np.all(np.isfinite(g)) for g in got):
        raise EffdlError(f"ONNX output of {path} is not finite")
    quantized_rule = rounds(model) and atol is None and rtol is None
    if not quantized_rule:
        atol = FLOAT_TOLERANCE[0] if atol is None else atol
        rtol = FLOAT_TOLERANCE[1] if rtol is None else rtol
        if not all(np.all(d <= atol + rtol * np.abs(e)) for d, e in zip(diffs, expected)):
            raise EffdlError(f"ONNX output differs from PyTorch: max abs diff {max_diff:.3g} "
                             f"(tolerance atol={atol:g}, rtol={rtol:g}) on {len(inputs)} {'images' if kind == 'images' else 'random inputs'} for {path}")
        return OnnxCheck(max_diff, len(inputs), kind, "float", note=note)
    if images is None:
        note = "random inputs: no images were given, and noise is not what the model sees"
    steps, medians, agreements, ties_only = [], [], [], True
    for d, g, e in zip(diffs, got, expected):
        step = max(float(np.abs(e).max()) / 127, 1e-12)
        steps.append((float(d.max()) / step if d.size else 0.0, step))
        medians.append(float(np.median(d)) / step if d.size else 0.0)
        if e.ndim == 2 and e.shape[1] > 1:
            agreement, ties = _agreement(e, g, step)
            agreements.append(agreement)
            ties_only = ties_only and ties
    worst_steps, step = max(steps)
    agreement = min(agreements, default=1.0)
    limit = step_limit(model)
    check = OnnxCheck(max_diff, len(inputs), kind, "quantized", agreement, step, worst_steps, note,
                      median_steps=max(medians), limit_steps=limit)
    if worst_steps > limit or max(medians) > MEDIAN_STEPS or (agreement < MIN_AGREEMENT and not ties_only):
        raise EffdlError(f"ONNX Runtime disagrees with PyTorch: {check.summary()}; needs agreement >= "
                         f"{MIN_AGREEMENT:.0%} (or only near-ties flipped), a median of at most {MEDIAN_STEPS:g} "
                         f"steps and at most {limit:g} steps, for {path}")
    return check


def check_onnx(
    model: nn.Module,
    path: str | Path,
    n: int = 8,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
    images: torch.Tensor | None = None,
) -> float:
    """`verify_onnx` (EffdlError if the file fails), returning only the max abs diff."""
    return verify_onnx(model, path, images, n=n, atol=atol, rtol=rtol, seed=seed).max_abs_diff
