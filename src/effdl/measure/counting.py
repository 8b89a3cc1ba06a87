"""The counting engine: trace one batch-1 forward pass and record every operation that costs.

`profile(model, input_size=None)` runs the model once on a random input and returns a
`ModelProfile`: one `LayerRecord` per executed operation, one `ParamRecord` per parameter tensor,
totals (parameters, MACs, packed model size, peak activation memory) and warnings.

`input_size` is the FULL input shape, batch dimension first and equal to 1, of any rank:
(1, 3, 32, 32) for images, (1, C, L) for a Conv1d network, (1, C, D, H, W) for Conv3d, (1, F) for
an MLP. The default (None) is (1, *model_input_size(model)): the size the model was trained at
(see `effdl.models.registry.model_input_size`), 3x32x32 for a model that records none.

How operations are caught:
- Leaf modules of known types (conv, linear, norms, activations, pools, flatten, shuffle) are
  recorded through global module hooks, with bits and sparsity read from the module (see
  `effdl.measure.bits`). Everything a counted module does inside its forward (a quantizer's
  rounding, a pruning mask product) belongs to that module and is not counted again.
- Every other call (F.relu, residual `+`, F.avg_pool2d, torch.cat, x.mean, a channel shuffle's
  transpose, F.conv2d in a user module...) is caught by a `TorchFunctionMode` and recorded under
  the name of the module that made it.
- Convolutions of every dimension, transposed ones included, and the whole matmul family (matmul,
  @, mm, bmm, mv, addmm, baddbmm, addbmm, addmv, einsum, linear, scaled_dot_product_attention) are
  counted from their operand shapes, whichever operand holds the weight. An operand is "model
  state" when its storage is a parameter, a buffer, or the result of arithmetic on model state
  only (W.t(), W * mask): such a tensor is the operation's weight (its bits and sparsity are
  measured on it, its parameters are attributed to the operation), never an activation.
- A call outside counted modules that performs multiply-accumulates (as seen by
  `torch.utils.flop_counter`) but that effdl does not count is refused with an EffdlError, never
  left out. A parameter that no recorded operation uses is listed in `ModelProfile.warnings`.

Per-record counts are dense and at full precision; `mults` and `adds` follow the MicroNet
conventions of spec/scoring.md (ReLU = 1 multiply per element, sigmoid = 2 multiplies + 1 add,
swish = 3 + 1, residual add = 1 add per element, a permutation = 1 multiply per element, a max-pool
comparison counts as an add; a spatial `Shift` module counts as a permutation: zero MACs and
zero parameters). `macs` is non-zero only for conv, linear, matmul and attention, so
the MAC total matches `torch.utils.flop_counter.FlopCounterMode` / 2 (convolution: output elements
x Cin/groups x kernel; transposed convolution: input elements x Cout/groups x kernel; a product of
(..., M, K) by (..., K, N): broadcast batch x M x K x N; einsum: pairwise, left to right, indices
held by one operand only are summed first; attention: batch x heads x Lq x Lk x (Dqk + Dv)).
Additions: K - 1 per output element of a product (a transposed convolution: MACs - outputs), plus
one per output element for a bias or the added input of addmm/baddbmm. Scorers apply bits,
sparsity and BN folding.

Peak activation memory is a liveness simulation over the recorded order: an activation buffer
(one tensor storage; views and in-place results share it) is live from the operation that writes
it to the last recorded operation that reads it, and the peak is the largest total of live buffer
bytes at any step (the model input included). Buffers read by a layer that declares fewer
activation bits are counted at those bits. Temporaries inside a single operation are not counted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from effdl.core.modules import eval_mode
from effdl.errors import EffdlError
from effdl.measure.bits import (
    FLOAT_BITS,
    act_bits,
    inference_weight,
    verify_weight_bits,
    weight_bits,
)
from effdl.models.layers import Shift
from effdl.models.registry import model_input_size

# Module types recorded as one operation each; the first matching entry wins (subclasses such as
# quantized convolutions match their base class).
MODULE_KINDS: list[tuple[type[nn.Module], str]] = [
    (nn.modules.conv._ConvNd, "conv"),  # 1d/2d/3d, transposed ones too (see _op_counts)
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
    # A spatial shift (Wu et al. 2018) has no weights and no MACs; it moves each element (or writes
    # a zero at the border), i.e. it is the product with a fixed sparse 0/1 matrix. The rules'
    # only count for data movement is spec/scoring.md's "A channel permutation counts as a sparse
    # permutation-matrix product", applied here exactly as for ChannelShuffle: 1 multiply per
    # output element in MicroNet, 0 operations in imt2021 (data movement) and imt2024 (no MACs).
    (Shift, "permute"),
]

# Functional calls (torch.*, F.*, Tensor methods, operators) recorded outside counted modules.
FUNCTION_KINDS: dict[str, str] = {
    "conv1d": "conv", "conv2d": "conv", "conv3d": "conv",
    "conv_transpose1d": "conv", "conv_transpose2d": "conv", "conv_transpose3d": "conv",
    "linear": "linear",
    **{name: "matmul" for name in (
        "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "mv", "dot", "vdot", "einsum",
        "addmm", "addmm_", "baddbmm", "baddbmm_", "addbmm", "addbmm_", "addmv", "addmv_")},
    "scaled_dot_product_attention": "attention",
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

# Kinds whose operand may be a weight of the model (its parameters are conv/linear weights, imt2024's w).
WEIGHTED_KINDS = ("conv", "linear", "matmul")
# Positions of (weight, bias) in the functional signatures (F.conv2d, F.conv_transpose2d, F.linear,
# F.batch_norm, F.layer_norm).
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
    transposed: bool = False  # a transposed convolution (weight is Cin x Cout/groups x kernel)
    window: int = 1  # input elements reduced into one output element (pools)
    sources: list[int] = field(default_factory=list)  # producing records; -1 = model input

    @property
    def weight_numel(self) -> int:
        return math.prod(self.weight_shape) if self.weight_shape else 0

    @property
    def sparse_mults(self) -> int:
        """Multiplies of the MACs that touch a non-zero weight (static sparsity; all when no weight)."""
        if not self.weight_numel:
            return self.macs
        return self.macs * self.weight_nonzero // self.weight_numel


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
    warnings: list[str] = field(default_factory=list)  # e.g. parameters no counted operation uses

    @property
    def params(self) -> int:
        """Every parameter element, once (`effdl.models.count_parameters`: BatchNorm affine
        included, buffers not)."""
        return sum(p.numel for p in self.parameters)

    @property
    def unused_parameters(self) -> list[ParamRecord]:
        """Parameters that no recorded operation uses (their arithmetic, if any, is not counted)."""
        return [p for p in self.parameters if p.layer is None]

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
            "warnings": list(self.warnings),
            "layers": [asdict(r) for r in self.layers],
            "parameters": [asdict(p) for p in self.parameters],
        }


def storage_bits(numel: int, nonzero: int, bits: int) -> int:
    """Bits to store a tensor: dense, or its non-zeros plus a 1-bit mask when that is smaller."""
    return min(numel * bits, nonzero * bits + numel)


def counted_module(module: nn.Module) -> nn.Module:
    """The module `module` is counted as: a wrapper that only adds rounding at deployment (it names
    the module it wraps in `effdl_counted_as`, e.g. a quantizing wrapper around a ReLU) counts as the
    wrapped module, under the wrapper's name; any other module as itself."""
    wrapped = getattr(module, "effdl_counted_as", None)
    return wrapped if isinstance(wrapped, nn.Module) else module


def module_kind(module: nn.Module) -> str | None:
    """The kind a module is counted as, or None when its inner calls are counted instead."""
    module = counted_module(module)
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
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _arg(args: tuple, kwargs: dict, index: int, *keys: str) -> Any:
    """Argument `index` of a call, or the first of `keys` given by keyword."""
    if len(args) > index:
        return args[index]
    return next((kwargs[k] for k in keys if k in kwargs), None)


def _product_macs(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """MACs of torch.matmul(a, b) for operand shapes a (..., M, K) and b (..., K, N), 1-D allowed."""
    a = (1, *a) if len(a) == 1 else a
    b = (*b, 1) if len(b) == 1 else b
    batch = torch.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    return math.prod(batch) * a[-2] * a[-1] * b[-1]


def _einsum_macs(equation: str, shapes: list[tuple[int, ...]]) -> int:
    """MACs of torch.einsum: operands contracted pairwise from the left, as torch does without
    opt_einsum; an index held by one operand only (and not needed later) is summed before the
    product, so it costs no MAC. Raises EffdlError when torch may choose another order."""
    eq = equation.replace(" ", "")
    lhs, _, out = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise EffdlError(f"einsum '{equation}' names {len(terms)} operands but got {len(shapes)}")
    if len(terms) > 2 and torch.backends.opt_einsum.is_available() and torch.backends.opt_einsum.enabled:
        raise EffdlError(f"einsum '{equation}' of {len(terms)} operands: opt_einsum chooses the contraction "
                         "order, which effdl does not count; set torch.backends.opt_einsum.enabled = False")
    ellipsis_dims = max((len(s) - len(t.replace("...", "")) for t, s in zip(terms, shapes) if "..." in t), default=0)
    placeholders = "".join(chr(0x100 + i) for i in range(ellipsis_dims))  # letters no equation uses
    sizes: dict[str, int] = {}
    letters_of = []
    for term, shape in zip(terms, shapes):
        if "..." in term:
            n = len(shape) - len(term.replace("...", ""))
            term = term.replace("...", placeholders[len(placeholders) - n:] if n else "")
        letters_of.append(term)
        for letter, size in zip(term, shape):
            sizes[letter] = max(sizes.get(letter, 1), int(size))
    if not out and "->" not in eq:  # implicit output: the indices that appear once
        counts = "".join(letters_of)
        out = "".join(sorted(c for c in set(counts) if counts.count(c) == 1))
    out = out.replace("...", placeholders)
    macs, current = 0, set(letters_of[0])
    for i, term in enumerate(letters_of[1:], start=1):
        later = set("".join(letters_of[i + 1:])) | set(out)
        other = set(term)
        kept = {c for c in current if c in other or c in later} | {c for c in other if c in current or c in later}
        macs += math.prod(sizes[c] for c in kept)
        current = {c for c in kept if c in later}
    return macs


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

    def __init__(self, model: nn.Module, flops: FlopCounterMode):
        super().__init__()
        self.names = {m: n for n, m in model.named_modules()}
        self.used_names: dict[str, int] = {}
        # Model state by storage: parameters, buffers and tensors computed from them alone (W.t(),
        # W * mask), with the parameter names they come from. Derived tensors are kept alive so
        # their storage is not reused by an activation during the trace.
        self.state: dict[int, tuple[torch.Tensor, frozenset[str]]] = {}
        for t in model.buffers():
            self.state[_ptr(t)] = (t, frozenset())
        for n, p in model.named_parameters():
            names = self.state.get(_ptr(p), (p, frozenset()))[1]
            self.state[_ptr(p)] = (p, names | {n})
        self.flops = flops
        self.stack: list[tuple[nn.Module, str | None]] = []
        self.counted_depth = 0
        self.records: list[LayerRecord] = []
        self.record_modules: list[nn.Module | None] = []
        self.record_params: list[dict[str, str]] = []  # param name -> role, per record
        self.buffers: dict[int, _Buffer] = {}

    def is_state(self, t: torch.Tensor) -> bool:
        return t.numel() > 0 and _ptr(t) in self.state

    def state_names(self, t: torch.Tensor | None) -> frozenset[str]:
        if t is None or not self.is_state(t):
            return frozenset()
        return self.state[_ptr(t)][1]

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
        if self.counted_depth > 0:  # inside a counted module: its own forward is its operation
            return func(*args, **kwargs)
        flops_before = self.flops.get_total_flops()
        out = func(*args, **kwargs)
        with torch._C.DisableTorchFunction():
            arg_tensors = _tensors(list(args) + list(kwargs.values()))
            if arg_tensors and all(self.is_state(t) for t in arg_tensors):
                self._derive(arg_tensors, out)  # arithmetic on model state only: a weight, not work
                return out
            fname = getattr(func, "__name__", "")
            kind = FUNCTION_KINDS.get(fname)
            if kind is not None:
                self._record_function(fname, kind, args, kwargs, out)
            elif self.flops.get_total_flops() > flops_before:
                macs = (self.flops.get_total_flops() - flops_before) // 2
                raise EffdlError(
                    f"{self._where()}{fname or func} performs {macs:,} multiply-accumulates that effdl does not "
                    "count; write it with a counted operation (conv, linear, matmul, einsum, "
                    "scaled_dot_product_attention) so that the count stays complete")
        return out

    def _where(self) -> str:
        parent = self.names.get(self.stack[-1][0], "") if self.stack else ""
        return f"{parent}: " if parent else ""

    def _derive(self, sources: list[torch.Tensor], out: Any) -> None:
        names = frozenset().union(*(self.state_names(t) for t in sources))
        for t in _tensors(out):
            if t.numel() > 0 and _ptr(t) not in self.state:
                self.state[_ptr(t)] = (t, names)

    # -- recording -----------------------------------------------------------------------------
    def _unique_name(self, name: str) -> str:
        n = self.used_names.get(name, 0)
        self.used_names[name] = n + 1
        return name if n == 0 else f"{name}#{n + 1}"

    def _record_module(self, module: nn.Module, kind: str, inputs: list[torch.Tensor],
                       outputs: list[torch.Tensor]) -> None:
        if not outputs:
            return
        prefix = self.names[module]
        module = counted_module(module)
        # A wrapper's parameters are its wrapped module's, named under that module's path (bn1.module.weight)
        param_prefix = self.names.get(module, prefix)
        weight = bias = None
        extra: dict[str, Any] = {}
        if kind in WEIGHTED_KINDS or kind in ("bn", "norm"):
            weight = inference_weight(module)
            b = getattr(module, "bias", None)
            bias = b if isinstance(b, torch.Tensor) else None
        if kind == "conv":
            extra = {"groups": module.groups, "kernel_size": tuple(module.kernel_size),
                     "transposed": bool(module.transposed)}
        elif kind in ("avgpool", "maxpool"):
            ks = getattr(module, "kernel_size", None)
            extra = {"kernel_size": _kernel(ks, outputs[0].dim() - 2)}
        w_bits = a_bits = None
        if kind in WEIGHTED_KINDS:
            w_bits, a_bits = weight_bits(module), act_bits(module)
        elif weight is not None:
            w_bits = _float_bits(weight)
        roles = {f"{param_prefix}.{n}" if param_prefix else n: self._role(module, n)
                 for n, _ in module.named_parameters()}
        inputs = [t for t in inputs if not self.is_state(t)][:1] or inputs[:1]
        self._add(prefix or type(module).__name__, kind, type(module).__name__, inputs, outputs[0],
                  weight, bias, w_bits, a_bits, roles, module, **extra)

    @staticmethod
    def _role(module: nn.Module, param_name: str) -> str:
        # torch.nn.utils.prune keeps the dense weight as weight_orig (the masked one is an attribute)
        base = param_name.removesuffix("_orig")
        return base if base in ("weight", "bias") else "other"

    def _record_function(self, fname: str, kind: str, args: tuple, kwargs: dict, out: Any) -> None:
        outputs = _tensors(out)
        if not outputs:
            return
        arg_tensors = _tensors(list(args) + list(kwargs.values()))
        inputs = [t for t in arg_tensors if not self.is_state(t)]
        state = [t for t in arg_tensors if self.is_state(t)]
        weight = bias = None
        counts = None
        extra: dict[str, Any] = {}
        roles: dict[str, str] = {}
        if kind in ("matmul", "attention"):
            weight, bias, inputs, counts = self._product(fname, kind, args, kwargs, outputs[0])
        elif kind in WEIGHTED_KINDS or kind in ("bn", "norm"):
            weight_at, bias_at = _WEIGHT_ARGS[kind]
            weight = _arg(args, kwargs, weight_at, "weight")
            bias = _arg(args, kwargs, bias_at, "bias")
            weight = weight if isinstance(weight, torch.Tensor) else None
            bias = bias if isinstance(bias, torch.Tensor) else None
            inputs = [t for t in arg_tensors if t is not weight and t is not bias][:1]
            if kind == "conv" and weight is not None:
                groups = _arg(args, kwargs, 6, "groups")
                extra = {"groups": int(groups or 1), "kernel_size": tuple(weight.shape[2:]),
                         "transposed": fname.startswith("conv_transpose")}
        elif kind in ("avgpool", "maxpool") and fname != "mean" and "adaptive" not in fname:
            ks = args[1] if len(args) > 1 else kwargs.get("kernel_size")
            extra = {"kernel_size": _kernel(ks, outputs[0].dim() - 2)}
        if not inputs:
            return
        for t, role in ((weight, "weight"), (bias, "bias")):
            for name in self.state_names(t):
                roles[name] = role
        for t in state:
            for name in self.state_names(t):
                roles.setdefault(name, "other")
        if kind == "permute" and outputs[0].numel() <= 1:
            return
        if kind in ("add", "mul") and outputs[0].dim() == 0:
            return
        w_bits = _float_bits(weight) if weight is not None else None
        a_bits = _float_bits(inputs[0]) if inputs[0].is_floating_point() else 32
        parent = self.names.get(self.stack[-1][0], "") if self.stack else ""
        name = f"{parent}.{fname}" if parent else fname
        self._add(name, kind, fname, inputs, outputs[0], weight, bias, w_bits, a_bits, roles, None,
                  counts=counts, **extra)

    def _product(self, fname: str, kind: str, args: tuple, kwargs: dict, out: torch.Tensor):
        """(weight, added input, activation inputs, (MACs, multiplies, adds)) of a matmul-family call.

        The weight is the operand that is model state (None when both are activations, as in
        attention scores); the added input is addmm's / baddbmm's `input` (a bias when it is state).
        """
        added = None
        if kind == "attention":
            q, k, v = (_arg(args, kwargs, i, key) for i, key in enumerate(("query", "key", "value")))
            b_h, lq, dqk = math.prod(q.shape[:-2]), q.shape[-2], q.shape[-1]
            lk, dv = k.shape[-2], v.shape[-1]
            scores = b_h * lq * lk
            macs = scores * (dqk + dv)
            # scale 1 multiply, softmax 2 multiplies + 1 add per score (MicroNet costs)
            mults = macs + 3 * scores
            adds = scores * (dqk - 1) + b_h * lq * dv * (lk - 1) + scores
            operands = [q, k, v]
            inputs = [t for t in operands if not self.is_state(t)]
            return None, None, inputs, (macs, mults, adds)
        if fname == "einsum":
            equation = args[0] if args else kwargs.get("equation")
            operands = list(args[1:]) if len(args) > 1 else list(kwargs.get("operands", ()))
            if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
                operands = list(operands[0])
            macs = _einsum_macs(equation, [tuple(t.shape) for t in operands]) if len(operands) > 1 else 0
        else:
            if fname.startswith(("addmm", "baddbmm", "addbmm", "addmv")):
                added = _arg(args, kwargs, 0, "input", "self")
                operands = [_arg(args, kwargs, 1, "mat1", "batch1", "mat"),
                            _arg(args, kwargs, 2, "mat2", "batch2", "vec")]
            elif fname == "__rmatmul__":
                operands = [_arg(args, kwargs, 1, "other"), _arg(args, kwargs, 0, "self")]
            else:
                operands = [_arg(args, kwargs, 0, "input", "self"), _arg(args, kwargs, 1, "other", "mat2", "vec")]
            macs = _product_macs(tuple(operands[0].shape), tuple(operands[1].shape))
        operands = [t for t in operands if isinstance(t, torch.Tensor)]
        weight = next((t for t in operands if self.is_state(t)), None)
        inputs = [t for t in operands if not self.is_state(t)]
        if isinstance(added, torch.Tensor) and not self.is_state(added):
            inputs.append(added)
        bias = added if isinstance(added, torch.Tensor) else None
        adds = max(macs - out.numel(), 0) + (out.numel() if bias is not None else 0)
        return weight, bias, inputs, (macs, macs, adds)

    def _add(self, name: str, kind: str, op: str, inputs: list[torch.Tensor], out: torch.Tensor,
             weight: torch.Tensor | None, bias: torch.Tensor | None, w_bits: int | None,
             a_bits: int | None, roles: dict[str, str], module: nn.Module | None,
             groups: int = 1, kernel_size: tuple[int, ...] = (), transposed: bool = False,
             counts: tuple[int, int, int] | None = None) -> None:
        index = len(self.records)
        first_in = inputs[0] if inputs else None
        if a_bits is None:
            a_bits = _float_bits(first_in) if first_in is not None and first_in.is_floating_point() else 32
        out_elems = out.numel()
        if counts is not None:
            (macs, mults, adds), window = counts, 1
        else:
            macs, mults, adds, window = _op_counts(kind, op, inputs, out, weight, bias, kernel_size, transposed)
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
            has_bias=bias is not None, groups=groups, kernel_size=kernel_size, transposed=transposed,
            window=window,
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
        ptr = _ptr(t)
        if ptr in self.state:
            return -1
        buf = self.buffers.get(ptr)
        if buf is None:  # written by an uncounted operation (e.g. .contiguous()) just before
            buf = self._new_buffer(t, index - 1, index - 1 if index > 0 else -1)
        buf.last_use = max(buf.last_use, index)
        if declared_bits is not None and t.is_floating_point():
            buf.nbytes = min(buf.nbytes, t.untyped_storage().nbytes() * declared_bits / (8 * t.element_size()))
        return buf.producer

    def _write(self, t: torch.Tensor, index: int) -> None:
        buf = self.buffers.get(_ptr(t))
        if buf is None:
            self._new_buffer(t, index, index)
        else:  # in place, or a view of a buffer already live
            buf.producer = index
            buf.last_use = max(buf.last_use, index)

    def _new_buffer(self, t: torch.Tensor, born: int, producer: int) -> _Buffer:
        buf = _Buffer(born, born, float(t.untyped_storage().nbytes()), producer, t)
        self.buffers[_ptr(t)] = buf
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
               kernel_size: tuple[int, ...], transposed: bool = False) -> tuple[int, int, int, int]:
    """(MACs, multiplies, adds, pooling window) of one operation at batch 1, dense."""
    out_elems = out.numel()
    if kind in WEIGHTED_KINDS:
        if weight is None:
            return 0, 0, 0, 1
        per_weight_row = math.prod(weight.shape[1:])  # Cin/groups x kernel (transposed: Cout/groups x kernel)
        if transposed:  # every input element meets Cout/groups x kernel weights
            macs = (inputs[0].numel() if inputs else 0) * per_weight_row
        else:  # every output element is a dot product of Cin/groups x kernel (or in_features)
            macs = out_elems * per_weight_row
        adds = max(macs - out_elems, 0) + (out_elems if bias is not None else 0)
        return macs, macs, adds, 1
    if kind in ("avgpool", "maxpool"):
        in_elems = inputs[0].numel() if inputs else out_elems
        window = math.prod(kernel_size) if kernel_size else max(1, round(in_elems / max(out_elems, 1)))
        mults = out_elems if kind == "avgpool" else 0
        return 0, mults, out_elems * (window - 1), window
    per_mult, per_add = ELEMENTWISE_COST.get(kind, (0, 0))
    return 0, per_mult * out_elems, per_add * out_elems, 1


def input_shape(model: nn.Module, input_size: Sequence[int] | None = None) -> tuple[int, ...]:
    """The batch-1 input shape `profile` traces: `input_size` (the full shape, batch first, batch
    1, any rank) or, when None, (1, *model_input_size(model)). Raises EffdlError otherwise."""
    if input_size is None:
        return (1, *model_input_size(model))
    shape = tuple(int(s) for s in input_size)
    if len(shape) < 2 or shape[0] != 1 or any(s <= 0 for s in shape):
        hint = f"; for one example of shape {shape} pass {(1, *shape)}" if shape and shape[0] != 1 else ""
        raise EffdlError(
            f"input size is the full input shape with batch 1 first, e.g. (1, 3, 32, 32) or (1, 4, 100), "
            f"with positive sizes; got {tuple(input_size)}{hint}")
    return shape


def profile(model: nn.Module, input_size: Sequence[int] | None = None) -> ModelProfile:
    """Trace one batch-1 forward pass of `model` on a random N(0, 1) input and count it.

    `input_size`: the full input shape, batch first and equal to 1, any rank ((1, 3, 32, 32),
    (1, C, L), (1, C, D, H, W), (1, F)); None (default): (1, *model_input_size(model)), the size the
    model was trained at. Raises EffdlError on a bad size, a model that fails on that input, a
    declared bit-width the weights contradict, or arithmetic effdl cannot count.
    """
    shape = input_shape(model, input_size)
    for name, module in model.named_modules():
        verify_weight_bits(module, name)
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = first.dtype if first is not None else torch.float32
    device = first.device if first is not None else torch.device("cpu")
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)

    # FlopCounterMode only tells the tracer which uncounted calls multiply-accumulate (refused)
    flops = FlopCounterMode(display=False)
    tracer = _Tracer(model, flops)
    tracer._new_buffer(x, -1, -1)
    pre = nn.modules.module.register_module_forward_pre_hook(tracer.pre_hook)
    post = nn.modules.module.register_module_forward_hook(tracer.post_hook)
    try:
        with eval_mode(model), torch.no_grad(), flops, tracer:
            out = model(x)
    except EffdlError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EffdlError(f"model failed on an input of shape {list(shape)}: {first_line} "
                         "(input size is the full shape, batch 1 first)") from None
    finally:
        pre.remove()
        post.remove()
    end = len(tracer.records)
    for t in _tensors(out):
        buf = tracer.buffers.get(_ptr(t))
        if buf is not None:
            buf.last_use = end - 1

    parameters = _param_records(model, tracer)
    warnings = [f"parameter {p.name} ({p.numel:,} values) is used by no counted operation: "
                "what it computes (if anything) is not in the counts" for p in parameters if p.layer is None]
    return ModelProfile(
        input_shape=shape,
        layers=tracer.records,
        parameters=parameters,
        buffer_bits=sum(b.numel() * _float_bits(b) for b in model.buffers() if b.is_floating_point()),
        peak_activation_bytes=tracer.peak_bytes(),
        warnings=warnings,
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
        if (layer is not None and role == "weight" and tracer.records[layer].kind in WEIGHTED_KINDS
                and tracer.records[layer].weight_numel == p.numel()):
            # the inference weight (quantized, masked) was measured when the layer was recorded
            bits = tracer.records[layer].weight_bits or _float_bits(p)
            nonzero = tracer.records[layer].weight_nonzero
        else:
            bits, nonzero = _float_bits(p), int(torch.count_nonzero(p.detach()))
        records.append(ParamRecord(name, p.numel(), nonzero, int(bits), layer, role))
        if layer is not None:
            tracer.records[layer].params += p.numel()
    return records
