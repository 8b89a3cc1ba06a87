"""The counting engine: trace one batch-1 forward pass and record every operation that costs.

`profile(model, input_size)` runs the model once on a random input of the dataset's shape and
returns a `ModelProfile`: one `LayerRecord` per executed operation, one `ParamRecord` per parameter
tensor, and totals (parameters, MACs, packed model size, peak activation memory).

How operations are caught:
- Leaf modules of known types (conv, linear, norms, activations, pools, flatten, shuffle) are
  recorded through global module hooks, with bits and sparsity read from the module (see
  `effdl.measure.bits`). Everything a counted module does inside its forward (a quantizer's
  rounding, a pruning mask product) belongs to that module and is not counted again.
- Every other call (F.relu, residual `+`, F.avg_pool2d, torch.cat, x.mean, a channel shuffle's
  transpose, F.conv2d in a user module...) is caught by a `TorchFunctionMode` and recorded under
  the name of the module that made it.

Per-record counts are dense and at full precision; `mults` and `adds` follow the MicroNet
conventions of spec/scoring.md (ReLU = 1 multiply per element, sigmoid = 2 multiplies + 1 add,
swish = 3 + 1, residual add = 1 add per element, a permutation = 1 multiply per element, a max-pool
comparison counts as an add). `macs` is non-zero only for conv, linear and matmul, so the MAC total
matches `torch.utils.flop_counter.FlopCounterMode` / 2. Scorers apply bits, sparsity and BN folding.

Peak activation memory is a liveness simulation over the recorded order: an activation buffer
(one tensor storage; views and in-place results share it) is live from the operation that writes
it to the last recorded operation that reads it, and the peak is the largest total of live buffer
bytes at any step (the model input included). Buffers read by a layer that declares fewer
activation bits are counted at those bits. Temporaries inside a single operation are not counted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from effdl.errors import EffdlError
from effdl.measure.bits import (
    FLOAT_BITS,
    act_bits,
    inference_weight,
    verify_weight_bits,
    weight_bits,
)

# Module types recorded as one operation each; the first matching entry wins (subclasses such as
# quantized convolutions match their base class).
MODULE_KINDS: list[tuple[type[nn.Module], str]] = [
    (nn.Conv1d, "conv"),  # transposed convolutions are not counted (different MAC formula)
    (nn.Conv2d, "conv"),
    (nn.Conv3d, "conv"),
    (nn.Linear, "linear"),
    (nn.modules.batchnorm._BatchNorm, "bn"),
    (nn.GroupNorm, "norm"),
    (nn.LayerNorm, "norm"),
    (nn.ReLU, "relu"),
    (nn.ReLU6, "relu6"),
    (nn.Hardtanh, "relu6"),
    (nn.LeakyReLU, "leaky_relu"),
    (nn.PReLU, "leaky_relu"),
    (nn.Sigmoid, "sigmoid"),
    (nn.Hardsigmoid, "hsigmoid"),
    (nn.SiLU, "swish"),
    (nn.Hardswish, "hswish"),
    (nn.GELU, "gelu"),
    (nn.Tanh, "tanh"),
    (nn.Softmax, "softmax"),
    (nn.modules.pooling._AvgPoolNd, "avgpool"),
    (nn.modules.pooling._AdaptiveAvgPoolNd, "avgpool"),
    (nn.modules.pooling._MaxPoolNd, "maxpool"),
    (nn.modules.pooling._AdaptiveMaxPoolNd, "maxpool"),
    (nn.Flatten, "flatten"),
    (nn.ChannelShuffle, "permute"),
    (nn.PixelShuffle, "permute"),
    (nn.PixelUnshuffle, "permute"),
]

# Functional calls (torch.*, F.*, Tensor methods, operators) recorded outside counted modules.
FUNCTION_KINDS: dict[str, str] = {
    "conv1d": "conv", "conv2d": "conv", "conv3d": "conv",
    "linear": "linear", "matmul": "matmul", "mm": "matmul", "bmm": "matmul", "__matmul__": "matmul",
    "batch_norm": "bn", "layer_norm": "norm", "group_norm": "norm",
    "relu": "relu", "relu_": "relu", "relu6": "relu6", "hardtanh": "relu6", "hardtanh_": "relu6",
    "clamp": "relu6", "clamp_": "relu6", "leaky_relu": "leaky_relu", "leaky_relu_": "leaky_relu",
    "prelu": "leaky_relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "hardsigmoid": "hsigmoid",
    "silu": "swish", "hardswish": "hswish", "gelu": "gelu", "tanh": "tanh", "tanh_": "tanh",
    "softmax": "softmax", "log_softmax": "softmax",
    "add": "add", "add_": "add", "__add__": "add", "__radd__": "add", "__iadd__": "add",
    "sub": "add", "sub_": "add", "__sub__": "add", "__rsub__": "add", "__isub__": "add",
    "mul": "mul", "mul_": "mul", "__mul__": "mul", "__rmul__": "mul", "__imul__": "mul",
    "div": "mul", "div_": "mul", "__truediv__": "mul", "__rtruediv__": "mul", "__itruediv__": "mul",
    "avg_pool1d": "avgpool", "avg_pool2d": "avgpool", "avg_pool3d": "avgpool",
    "adaptive_avg_pool1d": "avgpool", "adaptive_avg_pool2d": "avgpool", "adaptive_avg_pool3d": "avgpool",
    "mean": "avgpool",
    "max_pool1d": "maxpool", "max_pool2d": "maxpool", "max_pool3d": "maxpool",
    "adaptive_max_pool1d": "maxpool", "adaptive_max_pool2d": "maxpool", "adaptive_max_pool3d": "maxpool",
    "cat": "cat", "concat": "cat", "concatenate": "cat", "stack": "cat",
    "transpose": "permute", "permute": "permute", "channel_shuffle": "permute",
    "native_channel_shuffle": "permute", "pixel_shuffle": "permute", "pixel_unshuffle": "permute",
    "flatten": "flatten",
}

# (multiplies, adds) per output element of the element-wise kinds (MicroNet conventions).
ELEMENTWISE_COST: dict[str, tuple[int, int]] = {
    "relu": (1, 0),
    "relu6": (2, 0),  # two clamps
    "leaky_relu": (2, 0),  # comparison + scale
    "sigmoid": (2, 1),
    "hsigmoid": (2, 1),
    "swish": (3, 1),
    "hswish": (3, 1),
    "gelu": (3, 1),
    "tanh": (1, 0),  # a transcendental op costs 1
    "softmax": (2, 1),  # exp and division per element, one add for the sum
    "bn": (1, 1),  # inference BN is a per-channel affine map
    "norm": (3, 4),  # statistics plus affine map (approximate)
    "add": (0, 1),
    "mul": (1, 0),
    "permute": (1, 0),  # a product with a sparse permutation matrix
    "cat": (0, 0),
    "flatten": (0, 0),
}

WEIGHTED_KINDS = ("conv", "linear")
# Positions of (weight, bias) in the functional signatures (F.conv2d, F.linear, F.batch_norm, F.layer_norm).
_WEIGHT_ARGS = {"conv": (1, 2), "linear": (1, 2), "bn": (3, 4), "norm": (2, 3)}


@dataclass
class LayerRecord:
    """One executed operation of a traced forward pass (batch 1)."""

    name: str
    kind: str
    op: str  # module class or function name
    input_shapes: list[tuple[int, ...]]
    output_shape: tuple[int, ...]
    params: int  # elements of the parameters this operation owns
    macs: int
    mults: int
    adds: int
    out_elems: int
    weight_bits: int | None  # None: the operation has no weight
    act_bits: int
    weight_shape: tuple[int, ...] = ()
    weight_nonzero: int = 0
    sparsity: float = 0.0  # measured fraction of exact zeros in the inference weight
    has_bias: bool = False
    groups: int = 1
    kernel_size: tuple[int, ...] = ()
    window: int = 1  # input elements reduced into one output element (pools)
    sources: list[int] = field(default_factory=list)  # producing records; -1 = model input

    @property
    def weight_numel(self) -> int:
        return math.prod(self.weight_shape) if self.weight_shape else 0


@dataclass
class ParamRecord:
    """One parameter tensor: its size, measured non-zeros, bits and the operation that uses it."""

    name: str
    numel: int
    nonzero: int
    bits: int
    layer: int | None  # index into ModelProfile.layers; None if no recorded operation uses it
    role: str  # "weight", "bias" or "other"


@dataclass
class ModelProfile:
    """Everything the scorers need about one model, measured on one batch-1 forward pass."""

    input_shape: tuple[int, ...]
    layers: list[LayerRecord]
    parameters: list[ParamRecord]
    buffer_bits: int  # floating-point buffers needed at inference (BN running statistics)
    peak_activation_bytes: int

    @property
    def params(self) -> int:
        """Every parameter element (BatchNorm included)."""
        return sum(p.numel for p in self.parameters)

    @property
    def weights(self) -> int:
        """Parameter elements of conv and linear layers, biases included (imt2024's w)."""
        return sum(p.numel for p in self.parameters
                   if p.layer is not None and self.layers[p.layer].kind in WEIGHTED_KINDS
                   and p.role in ("weight", "bias"))

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.layers)

    @property
    def mults(self) -> int:
        return sum(r.mults for r in self.layers)

    @property
    def adds(self) -> int:
        return sum(r.adds for r in self.layers)

    @property
    def size_bytes(self) -> int:
        """Parameters at their real bit-width (packed; sparse as non-zeros + bitmask when smaller)
        plus floating-point buffers, in bytes."""
        bits = sum(storage_bits(p.numel, p.nonzero, p.bits) for p in self.parameters)
        return math.ceil((bits + self.buffer_bits) / 8)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "params": self.params,
            "weights": self.weights,
            "macs": self.macs,
            "mults": self.mults,
            "adds": self.adds,
            "size_bytes": self.size_bytes,
            "peak_activation_bytes": self.peak_activation_bytes,
            "layers": [asdict(r) for r in self.layers],
            "parameters": [asdict(p) for p in self.parameters],
        }


def storage_bits(numel: int, nonzero: int, bits: int) -> int:
    """Bits to store a tensor: dense, or its non-zeros plus a 1-bit mask when that is smaller."""
    return min(numel * bits, nonzero * bits + numel)


def module_kind(module: nn.Module) -> str | None:
    """The kind a module is counted as, or None when its inner calls are counted instead."""
    for cls, kind in MODULE_KINDS:
        if isinstance(module, cls):
            return kind
    return None


def _float_bits(t: torch.Tensor) -> int:
    return FLOAT_BITS.get(t.dtype, 32)


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _kernel(value: Any, dims: int) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,) * dims
    return tuple(int(v) for v in value)


@dataclass
class _Buffer:
    born: int
    last_use: int
    nbytes: float
    producer: int
    keep: torch.Tensor  # keeps the storage alive so its address is not reused during the trace


class _Tracer(TorchFunctionMode):
    """Records operations during one forward pass (module hooks + functional calls)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.names = {m: n for n, m in model.named_modules()}
        self.used_names: dict[str, int] = {}
        self.param_ids = {id(p): n for n, p in model.named_parameters()}
        self.buffer_ids = {id(b) for b in model.buffers()}
        self.param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.param_ptrs |= {b.untyped_storage().data_ptr() for b in model.buffers()}
        self.stack: list[tuple[nn.Module, str | None]] = []
        self.counted_depth = 0
        self.records: list[LayerRecord] = []
        self.record_modules: list[nn.Module | None] = []
        self.record_params: list[dict[str, str]] = []  # param name -> role, per record
        self.buffers: dict[int, _Buffer] = {}

    # -- module hooks --------------------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args: Any) -> None:
        if module not in self.names:
            return
        kind = module_kind(module) if self.counted_depth == 0 else None
        self.stack.append((module, kind))
        if kind is not None:
            self.counted_depth += 1

    def post_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if module not in self.names or not self.stack:
            return
        _, kind = self.stack.pop()
        if kind is None:
            return
        self.counted_depth -= 1
        with torch._C.DisableTorchFunction():
            self._record_module(module, kind, _tensors(args), _tensors(output))

    # -- functional calls ----------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.counted_depth == 0:
            kind = FUNCTION_KINDS.get(getattr(func, "__name__", ""))
            if kind is not None:
                with torch._C.DisableTorchFunction():
                    self._record_function(func.__name__, kind, args, kwargs, out)
        return out

    # -- recording -----------------------------------------------------------------------------
    def _unique_name(self, name: str) -> str:
        n = self.used_names.get(name, 0)
        self.used_names[name] = n + 1
        return name if n == 0 else f"{name}#{n + 1}"

    def _record_module(self, module: nn.Module, kind: str, inputs: list[torch.Tensor],
                       outputs: list[torch.Tensor]) -> None:
        if not outputs:
            return
        weight = bias = None
        extra: dict[str, Any] = {}
        if kind in WEIGHTED_KINDS or kind in ("bn", "norm"):
            weight = inference_weight(module)
            b = getattr(module, "bias", None)
            bias = b if isinstance(b, torch.Tensor) else None
        if kind == "conv":
            extra = {"groups": module.groups, "kernel_size": tuple(module.kernel_size)}
        elif kind in ("avgpool", "maxpool"):
            ks = getattr(module, "kernel_size", None)
            extra = {"kernel_size": _kernel(ks, outputs[0].dim() - 2)}
        w_bits = a_bits = None
        if kind in WEIGHTED_KINDS:
            w_bits, a_bits = weight_bits(module), act_bits(module)
        elif weight is not None:
            w_bits = _float_bits(weight)
        prefix = self.names[module]
        roles = {f"{prefix}.{n}" if prefix else n: self._role(module, n)
                 for n, _ in module.named_parameters()}
        self._add(prefix or type(module).__name__, kind, type(module).__name__, inputs, outputs[0],
                  weight, bias, w_bits, a_bits, roles, module, **extra)

    @staticmethod
    def _role(module: nn.Module, param_name: str) -> str:
        return param_name if param_name in ("weight", "bias") else "other"

    def _record_function(self, fname: str, kind: str, args: tuple, kwargs: dict, out: Any) -> None:
        outputs = _tensors(out)
        if not outputs:
            return
        arg_tensors = _tensors(list(args) + list(kwargs.values()))
        inputs = [t for t in arg_tensors if id(t) not in self.param_ids and id(t) not in self.buffer_ids]
        weights = [t for t in arg_tensors if id(t) in self.param_ids]
        if not inputs:
            return  # arithmetic on model state only (e.g. building a masked weight or a BN scale)
        weight = bias = None
        extra: dict[str, Any] = {}
        roles: dict[str, str] = {}
        if kind in WEIGHTED_KINDS or kind in ("bn", "norm"):
            weight_at, bias_at = _WEIGHT_ARGS[kind]

            def arg(i: int, key: str):
                v = args[i] if len(args) > i else kwargs.get(key)
                return v if isinstance(v, torch.Tensor) else None

            weight, bias = arg(weight_at, "weight"), arg(bias_at, "bias")
            inputs = [t for t in inputs if t is not weight and t is not bias][:1]
            for t, role in ((weight, "weight"), (bias, "bias")):
                if t is not None and id(t) in self.param_ids:
                    roles[self.param_ids[id(t)]] = role
            if kind == "conv" and weight is not None:
                groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
                extra = {"groups": int(groups), "kernel_size": tuple(weight.shape[2:])}
        elif kind in ("avgpool", "maxpool") and fname != "mean" and "adaptive" not in fname:
            ks = args[1] if len(args) > 1 else kwargs.get("kernel_size")
            extra = {"kernel_size": _kernel(ks, outputs[0].dim() - 2)}
        for t in weights:
            roles.setdefault(self.param_ids[id(t)], "other")
        if kind == "permute" and outputs[0].numel() <= 1:
            return
        if kind in ("add", "mul") and outputs[0].dim() == 0:
            return
        w_bits = _float_bits(weight) if weight is not None else None
        a_bits = _float_bits(inputs[0]) if inputs[0].is_floating_point() else 32
        parent = self.names.get(self.stack[-1][0], "") if self.stack else ""
        name = f"{parent}.{fname}" if parent else fname
        self._add(name, kind, fname, inputs, outputs[0], weight, bias, w_bits, a_bits, roles, None, **extra)

    def _add(self, name: str, kind: str, op: str, inputs: list[torch.Tensor], out: torch.Tensor,
             weight: torch.Tensor | None, bias: torch.Tensor | None, w_bits: int | None,
             a_bits: int | None, roles: dict[str, str], module: nn.Module | None,
             groups: int = 1, kernel_size: tuple[int, ...] = ()) -> None:
        index = len(self.records)
        first_in = inputs[0] if inputs else None
        if a_bits is None:
            a_bits = _float_bits(first_in) if first_in is not None and first_in.is_floating_point() else 32
        out_elems = out.numel()
        macs, mults, adds, window = _op_counts(kind, op, inputs, out, weight, bias, kernel_size)
        if kind == "avgpool" and out.dim() > 2 and math.prod(out.shape[2:]) == 1 and window > 1:
            kind = "global_avgpool"
        if kind == "avgpool" and op == "mean" and out.dim() <= 2:
            kind = "global_avgpool"
        nonzero = int(torch.count_nonzero(weight)) if weight is not None else 0
        numel = weight.numel() if weight is not None else 0
        record = LayerRecord(
            name=self._unique_name(name), kind=kind, op=op,
            input_shapes=[tuple(t.shape) for t in inputs], output_shape=tuple(out.shape),
            params=0, macs=macs, mults=mults, adds=adds, out_elems=out_elems,
            weight_bits=w_bits, act_bits=int(a_bits),
            weight_shape=tuple(weight.shape) if weight is not None else (),
            weight_nonzero=nonzero, sparsity=(1 - nonzero / numel) if numel else 0.0,
            has_bias=bias is not None, groups=groups, kernel_size=kernel_size, window=window,
        )
        declared_act = getattr(module, "act_bits", None) if module is not None else None
        record.sources = [self._read(t, index, declared_act) for t in inputs]
        for t in _tensors(out):
            self._write(t, index)
        self.records.append(record)
        self.record_modules.append(module)
        self.record_params.append(roles)

    # -- activation buffers (for sources and peak memory) --------------------------------------
    def _read(self, t: torch.Tensor, index: int, declared_bits: int | None) -> int:
        ptr = t.untyped_storage().data_ptr()
        if ptr in self.param_ptrs:
            return -1
        buf = self.buffers.get(ptr)
        if buf is None:  # written by an uncounted operation (e.g. .contiguous()) just before
            buf = self._new_buffer(t, index - 1, index - 1 if index > 0 else -1)
        buf.last_use = max(buf.last_use, index)
        if declared_bits is not None and t.is_floating_point():
            buf.nbytes = min(buf.nbytes, t.untyped_storage().nbytes() * declared_bits / (8 * t.element_size()))
        return buf.producer

    def _write(self, t: torch.Tensor, index: int) -> None:
        ptr = t.untyped_storage().data_ptr()
        buf = self.buffers.get(ptr)
        if buf is None:
            self._new_buffer(t, index, index)
        else:  # in place, or a view of a buffer already live
            buf.producer = index
            buf.last_use = max(buf.last_use, index)

    def _new_buffer(self, t: torch.Tensor, born: int, producer: int) -> _Buffer:
        buf = _Buffer(born, born, float(t.untyped_storage().nbytes()), producer, t)
        self.buffers[t.untyped_storage().data_ptr()] = buf
        return buf

    def peak_bytes(self) -> int:
        steps = len(self.records)
        live = [0.0] * (steps + 1)  # live[i + 1]: bytes live at step i (step -1: the input)
        for buf in self.buffers.values():
            for i in range(buf.born, buf.last_use + 1):
                live[i + 1] += buf.nbytes
        return math.ceil(max(live))


def _op_counts(kind: str, op: str, inputs: list[torch.Tensor], out: torch.Tensor,
               weight: torch.Tensor | None, bias: torch.Tensor | None,
               kernel_size: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(MACs, multiplies, adds, pooling window) of one operation at batch 1, dense."""
    out_elems = out.numel()
    if kind in WEIGHTED_KINDS or kind == "matmul":
        if kind == "matmul":
            dot = inputs[0].shape[-1] if inputs else 0
        elif weight is None:
            return 0, 0, 0, 1
        else:
            dot = math.prod(weight.shape[1:])  # Cin/groups * kernel elements, or in_features
        macs = out_elems * dot
        adds = out_elems * (dot - 1) + (out_elems if bias is not None else 0)
        return macs, macs, adds, 1
    if kind in ("avgpool", "maxpool"):
        in_elems = inputs[0].numel() if inputs else out_elems
        window = math.prod(kernel_size) if kernel_size else max(1, round(in_elems / max(out_elems, 1)))
        mults = out_elems if kind == "avgpool" else 0
        return 0, mults, out_elems * (window - 1), window
    per_mult, per_add = ELEMENTWISE_COST.get(kind, (0, 0))
    return 0, per_mult * out_elems, per_add * out_elems, 1


def _input_shape(input_size: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_size)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) < 2 or shape[0] != 1 or any(s <= 0 for s in shape):
        raise EffdlError(f"input size must be (C, H, W) or (1, C, H, W) with positive sizes, got {input_size}")
    return shape


def profile(model: nn.Module, input_size: tuple[int, ...] | list[int] = (1, 3, 32, 32)) -> ModelProfile:
    """Trace one batch-1 forward pass of `model` on a random input of `input_size`."""
    shape = _input_shape(input_size)
    for name, module in model.named_modules():
        verify_weight_bits(module, name)
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = first.dtype if first is not None else torch.float32
    device = first.device if first is not None else torch.device("cpu")
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)

    tracer = _Tracer(model)
    tracer._new_buffer(x, -1, -1)
    was_training = model.training
    model.eval()
    pre = nn.modules.module.register_module_forward_pre_hook(tracer.pre_hook)
    post = nn.modules.module.register_module_forward_hook(tracer.post_hook)
    try:
        with torch.no_grad(), tracer:
            out = model(x)
    except EffdlError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EffdlError(f"model failed on an input of shape {list(shape)}: {first_line}") from None
    finally:
        pre.remove()
        post.remove()
        model.train(was_training)
    end = len(tracer.records)
    for t in _tensors(out):
        buf = tracer.buffers.get(t.untyped_storage().data_ptr())
        if buf is not None:
            buf.last_use = end - 1

    return ModelProfile(
        input_shape=shape,
        layers=tracer.records,
        parameters=_param_records(model, tracer),
        buffer_bits=sum(b.numel() * _float_bits(b) for b in model.buffers() if b.is_floating_point()),
        peak_activation_bytes=tracer.peak_bytes(),
    )


def _param_records(model: nn.Module, tracer: _Tracer) -> list[ParamRecord]:
    """One record per parameter tensor, attached to the first operation that uses it."""
    owner: dict[str, tuple[int, str]] = {}
    for index, roles in enumerate(tracer.record_params):
        for name, role in roles.items():
            owner.setdefault(name, (index, role))
    records = []
    for name, p in model.named_parameters():
        layer, role = owner.get(name, (None, "other"))
        if layer is not None and role == "weight" and tracer.records[layer].kind in WEIGHTED_KINDS:
            # the inference weight (quantized, masked) was measured when the layer was recorded
            bits = tracer.records[layer].weight_bits or _float_bits(p)
            nonzero = tracer.records[layer].weight_nonzero
        else:
            bits, nonzero = _float_bits(p), int(torch.count_nonzero(p.detach()))
        records.append(ParamRecord(name, p.numel(), nonzero, int(bits), layer, role))
        if layer is not None:
            tracer.records[layer].params += p.numel()
    return records
