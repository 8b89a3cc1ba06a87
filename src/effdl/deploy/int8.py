"""int8 ONNX export: QuantizeLinear / DequantizeLinear (QDQ) placed so ONNX Runtime runs integer kernels.

Approach: the int8 PyTorch model is copied into a float model whose layers hold the dequantized
weights; that model goes through the project's fp32 exporter (`effdl.deploy.onnx`), and a
post-processing step rewrites the graph:
- each quantized weight becomes a uint8 initializer (the int8 integers + 128, zero point 128: see
  WEIGHT_ZERO_POINT) with a per-channel DequantizeLinear (axis 0),
- each quantized layer's input goes through QuantizeLinear -> DequantizeLinear with the grid
  (scale, zero point) of its PyTorch activation quantizer,
- each quantized layer's output goes through QuantizeLinear -> DequantizeLinear too: with its
  own output quantizer's grid when it has one (layers feeding a residual Add), otherwise with the
  grid of the layers it feeds, where that is exact (see `output_quantization_points`).
ONNX Runtime only turns DQ -> Conv -> Q into an integer convolution (QLinearConv) when the
output is quantized; with the three rules every convolution of a ResNet becomes one. A residual
block's input that the PyTorch model rounds where it is made (`SharedInputQuant`, so the shortcut
reads integers too) is quantized for every reader, and so is a tensor read only by quantized layers
on one grid: both inputs of each residual Add are then integers and its output is quantized, which
ONNX Runtime runs as QLinearAdd (resnet20: 8 of its 9 Adds; the last feeds the float average pool).

Which models: a float model (BatchNorm folded, then Int8StaticConfig and calibration), or a
model already quantized whose every quantized layer sits on uniform grids of at most 8 bits
(`weight_grid`, `act_grid`): weights min-max or LSQ at 2..8 bits (per channel or per tensor),
inputs on a calibrated range (ptq-int8, QAT minmax), LSQ or PACT grid at 2..8 bits. A k-bit grid is
a subset of int8's with the same scale (its integers lie in -2^(k-1)..2^(k-1)-1, or 0..2^k-1), so
a 4-bit QAT model exports exactly: its weight initializers hold the 4-bit integers (+ 128),
and where an activation grid is narrower than uint8's 0..255 (fewer bits, or signed PACT's
symmetric -(2^(k-1)-1)..2^(k-1)-1) an integer Clip between QuantizeLinear and DequantizeLinear
saturates at the quantizer's own ends, which ONNX Runtime's uint8 rounding alone would not. The
Clip sits between Q and DQ, so the DQ -> Conv -> Q patterns ONNX Runtime fuses into QLinearConv
stay intact. Anything else (DoReFa's tanh-normalised weights, binary / sign activations,
k-means codebooks, weight-only quantization, half precision, more than 8 bits) is refused with an
EffdlError that says why; those models export as float graphs of their fake-quant arithmetic
(`export_onnx`).
A BatchNorm after a quantized conv (QAT keeps it) is folded into the exported conv by scaling the
channel's grid, not the integers: f * (s * q) = (|f| s) * (sign(f) q), exact. A weight the
exporter changed anyway is refused rather than clipped onto a grid it no longer fits.

The scales are exactly the fake-quant model's, and in eval mode the fake-quant model rounds each
bias onto the int32 grid the integer kernels add it on (`effdl.compress.quantize.grids`), so ONNX
Runtime computes the same function as PyTorch up to float accumulation order: an activation that
lies on a rounding boundary may still land one step away. The
check after export (`effdl.deploy.onnx.verify_onnx`, run by `export_int8_verified` on images
passed in, e.g. calibration-like training images) therefore judges what matters: top-1
agreement with PyTorch and the largest output error in steps of the output's int8 grid, not a
float tolerance. A file that fails is deleted, never left at the asked-for path.

Measured with `effdl bench MODEL --int8 --batch-sizes 1 --threads 1` (2026-11-22, 2-core CPU with
AVX512-VNNI, other jobs running; weights then stored as int8, see WEIGHT_ZERO_POINT for today's uint8): resnet18 at 32x32, fp32 ONNX 22.7 ms -> int8 8.5 ms (2.7x),
file 44.7 -> 11.3 MB; resnet20 0.89 -> 0.55 ms (1.6x). On very small models (resnet20 at width
0.25: 0.34 -> 0.68 ms) the Q/DQ and layout changes cost more than the integer convolutions save.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from effdl.compress.quantize import Int8StaticConfig, calibrate, fold_batchnorm, is_quantized, quantize_
from effdl.compress.quantize.api import quantized_layers
from effdl.compress.quantize.fold import find_conv_bn_pairs, fold_pair
from effdl.compress.quantize.layers import OutputQuantAfter, SharedInputQuant
from effdl.compress.quantize.grids import (
    MAX_BITS, MIN_BITS, ActGrid, act_grid, empty_channels, grid_bits, integer_bias_shift, integer_weight_scales,
    weight_scales,
)
from effdl.core.modules import replace_submodule
from effdl.deploy.onnx import OnnxCheck, export_onnx, export_verified
from effdl.errors import EffdlError

WEIGHT_OPS = {"Conv", "Gemm"}
UINT8_CODES = (0, 255)
# Weights are stored as uint8 codes q + 128 with zero point 128 (the same integers q), not as int8:
# ONNX Runtime's x86 kernels for uint8 activations x int8 weights (U8S8) sum pairs of products in
# 16 bits on CPUs without VNNI (AVX2 only: vpmaddubsw) and saturate there (255 * 127 * 2 > 32767), so a
# file that matched PyTorch on an AVX512-VNNI machine disagreed by 70 output steps on a 2-core AMD
# EPYC with AVX2 only (the README's demo, 2026-12-01). U8U8 has no such path on any CPU; it costs
# 1.15-1.4x batch-1 latency there (resnet20 0.84 -> 1.15 ms, resnet18 8.2 -> 9.4 ms, one thread) against the
# saturating kernel. ONNX Runtime's quantization guide recommends U8U8 for exactly this case.
WEIGHT_ZERO_POINT = 128
INT32_MAX = 2**31 - 1  # the integer kernels add the bias as int32


@dataclass(frozen=True)
class LayerQParams:
    """What a layer's QDQ nodes need: per-channel weight scales, the input's (and output's) grid."""

    weight_scale: np.ndarray
    input_scale: float
    input_zero_point: int
    output_grid: ActGrid | None = None  # when the layer quantizes its output
    input_codes: tuple[int, int] = UINT8_CODES  # uint8 codes the input's integers occupy
    shared_input: bool = False  # the input is rounded where it is made, for every reader (SharedInputQuant)

    @property
    def input_grid(self) -> ActGrid:
        return (self.input_scale, self.input_zero_point, *self.input_codes)


def weight_grid(layer: nn.Module) -> np.ndarray | None:
    """`weight_scales` as the float32 array the QDQ initializers are written from."""
    scales = weight_scales(layer)
    return None if scales is None else scales.cpu().numpy().astype(np.float32)


def _int8_problem(layer: nn.Module) -> str | None:
    """Why `layer` cannot be written as int8 QDQ, or None."""
    weights = layer.weight_quantizer
    if weight_grid(layer) is None:
        return (f"its {type(weights).__name__} {layer.weight_bits}-bit weights are not on a uniform grid of "
                f"{MIN_BITS} to {MAX_BITS} bits")
    if layer.act_quantizer is None:
        return "it does not quantize its input (weight-only quantization: no integer kernel to run)"
    if act_grid(layer.act_quantizer) is None:
        act = layer.act_quantizer
        if grid_bits(act) and not bool(getattr(act, "ready", True)):
            return "its input quantizer is not calibrated (run calibrate(model, images) first)"
        return f"its {type(act).__name__} {layer.act_bits}-bit input quantizer is no uniform grid of at most 8 bits"
    output = layer.output_quantizer
    if output is not None and act_grid(output) is None:
        return (f"it quantizes its output with a {type(output).__name__} at {output.bits} bits, "
                "not a uniform grid of at most 8 bits")
    return None


def int8_model(model: nn.Module, calibration_images: torch.Tensor | None, calibration: str = "minmax") -> nn.Module:
    """An int8 fake-quant model to export: a float `model` is copied, BN-folded, quantized with
    Int8StaticConfig and calibrated on `calibration_images`; a quantized one is returned as it is
    when int8 QDQ can express every quantized layer (module docstring), else EffdlError says why."""
    if getattr(model, "effdl_half_dtype", None) is not None:
        raise EffdlError(f"int8 export of a {model.effdl_half_dtype} model: its weights are half precision, "
                         "not int8; export the float checkpoint with --int8 (it is calibrated on training images)")
    if not is_quantized(model):
        if calibration_images is None:
            raise EffdlError("int8 export of a float model needs calibration images")
        q = copy.deepcopy(model).eval()
        fold_batchnorm(q)
        quantize_(q, Int8StaticConfig(calibration=calibration))
        return calibrate(q, calibration_images)
    for name, layer in quantized_layers(model).items():
        problem = _int8_problem(layer)
        if problem is not None:
            raise EffdlError(
                f"int8 export cannot express layer {name}: {problem}. Export it without --int8 (a float ONNX "
                "graph of the fake-quant model), or quantize the float model with ptq-int8 or QAT at 2 to 8 "
                "bits with --qat-method minmax or lsq first"
            )
    return model


def dequantized_float_model(model: nn.Module) -> tuple[nn.Module, dict[str, LayerQParams]]:
    """A float copy with plain layers holding the dequantized weights, and each layer's qparams.

    Each bias is written already rounded onto the int32 grid the integer kernels add it on, as the
    PyTorch model's eval rounds it (`integer_bias_shift`): ONNX Runtime rounds a float bias itself
    only where it fuses an integer kernel, so a layer it leaves in float (the logits) computes the
    same. A BatchNorm2d right after a quantized conv is folded into the copy, with the channel's
    weight scale multiplied by |gamma / sqrt(var + eps)| so the integers stay those of the fake-quant
    model (module docstring; `integer_weight_scales`). Raises EffdlError when a bias does not fit
    int32 on its grid (a channel scaled almost to zero, with a large shift).
    """
    float_model = copy.deepcopy(model).eval()
    layer_names = {layer: name for name, layer in quantized_layers(float_model).items()}
    shared = set()
    wrappers = [(n, m) for n, m in float_model.named_modules() if isinstance(m, (SharedInputQuant, OutputQuantAfter))]
    for name, wrapper in wrappers:
        if wrapper.layer not in layer_names:  # a submodule cut from a quantized model
            raise EffdlError(f"int8 export: {name} is rounded by a quantizer of a layer outside this model; "
                             "export the whole quantized model")
        if isinstance(wrapper, SharedInputQuant):  # the graph rounds that tensor itself: output_quantization_points
            shared.add(layer_names[wrapper.layer])
        # An OutputQuantAfter's BatchNorm is folded into its layer below, whose output grid is then its own.
        replace_submodule(float_model, name, wrapper.module)
    qparams, empty = {}, {}
    modules = set(float_model.modules())
    for name, layer in quantized_layers(float_model).items():
        batchnorm = layer.__dict__.get("folded_batchnorm")
        if batchnorm is not None and batchnorm not in modules:
            raise EffdlError(f"int8 export: layer {name}'s BatchNorm is outside this model; export the whole "
                             "quantized model")
        with torch.no_grad():
            weight = layer.quantized_weight().detach().clone()
            shift = integer_bias_shift(layer, batchnorm)
        empty[name] = empty_channels(layer.weight).cpu()
        output_grid = act_grid(layer.output_quantizer) if layer.output_quantizer is not None else None
        scale, zero_point, lowest, highest = act_grid(layer.act_quantizer)
        qparams[name] = LayerQParams(weight_grid(layer), float(scale), int(zero_point), output_grid,
                                     (int(lowest), int(highest)), name in shared)
        has_bias = layer.bias is not None or shift is not None
        if isinstance(layer, nn.Conv2d):
            plain = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                              layer.dilation, layer.groups, has_bias, layer.padding_mode)
        else:
            plain = nn.Linear(layer.in_features, layer.out_features, has_bias)
        plain.weight.data.copy_(weight)
        if has_bias:
            bias = layer.bias.detach().float() if layer.bias is not None else torch.zeros(weight.shape[0])
            plain.bias.data.copy_(bias + (shift.cpu() if shift is not None else 0))
        replace_submodule(float_model, name, plain)
    factors = {conv: fold_pair(float_model, conv, bn).detach().float().cpu()
               for conv, bn in find_conv_bn_pairs(float_model) if conv in qparams}
    for name, q in qparams.items():  # the scales the integer layer holds: folded, and for channels with no weights
        plain = float_model.get_submodule(name)
        bias = plain.bias.detach().float().cpu() if plain.bias is not None else torch.zeros(len(q.weight_scale))
        factor = factors.get(name, torch.ones(len(q.weight_scale)))
        scale = integer_weight_scales(torch.from_numpy(q.weight_scale), factor, bias, q.input_scale, empty[name])
        qparams[name] = q = dataclasses.replace(q, weight_scale=scale.numpy().astype(np.float32))
        steps = np.abs(bias.numpy() / (q.input_scale * q.weight_scale))
        if steps.max() > INT32_MAX:
            channel = int(steps.argmax())
            # The grid is input step x weight scale: say which of the two collapsed.
            cause = (f"its input step is {q.input_scale:.3g} (a learned step driven to its floor: train with a "
                     "lower learning rate)" if q.input_scale < 1e-6 else
                     f"its weight scale there is {float(q.weight_scale[channel]):.3g} (a BatchNorm scale near 0? "
                     "prune that channel)")
            raise EffdlError(f"int8 export: layer {name}'s bias is {steps.max():.3g} steps of its int32 grid in "
                             f"channel {channel} (at most {INT32_MAX}); {cause}; or export without --int8")
    return float_model, qparams


# Monotone ops and reshapes: rounding before them, then again after them, gives what rounding
# after them alone gives (the PyTorch side's list is in compress/quantize/outputs.py).
GRID_PRESERVING_OPS = {"Relu", "Clip", "MaxPool", "Identity", "Flatten", "Reshape"}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for tensor in node.input:
            readers.setdefault(tensor, []).append(node)
    return readers


def _layer_of(node: onnx.NodeProto, qparams: dict[str, LayerQParams], initializers: set[str]) -> str | None:
    """The quantized layer `node` computes (its weight initializer is `<layer>.weight`), if any."""
    if node.op_type not in WEIGHT_OPS or len(node.input) < 2 or node.input[1] not in initializers:
        return None
    name = node.input[1].removesuffix(".weight")
    return name if name in qparams else None


def output_quantization_points(
    graph: onnx.GraphProto, qparams: dict[str, LayerQParams]
) -> dict[str, ActGrid]:
    """Where each quantized layer's output is quantized: tensor -> its grid (`act_grid`).

    A layer with its own output quantizer (`quantize_outputs` of Int8StaticConfig / FakeQuantConfig) is
    quantized at its output with that quantizer's grid, as in PyTorch. Any other layer's output
    is quantized only where that leaves the function unchanged: at its output, or at the output
    of the Relu that is its only reader, when every path from there runs through grid-preserving
    ops only and ends at the data input of quantized layers that all share one input grid. Those
    layers' input quantizers round these values anyway, and relu / max / clip are monotone, so
    rounding first gives exactly the same numbers. Other outputs (reaching a residual Add, an
    average pool or the graph output) stay float. The grid's clip to its codes commutes with
    those ops as its rounding does (clipping is monotone too), so a k-bit grid is exact there as well.
    A layer whose input the PyTorch model rounds where it is made (`shared_input`: a residual
    block's input, read by the shortcut too) has that input tensor quantized for every reader, so
    both inputs of the residual Add are integers and ONNX Runtime adds them as such (QLinearAdd);
    so is an input that only quantized layers on one grid read (one QuantizeLinear for all of them,
    which ONNX Runtime needs to fuse the Add before them).
    """
    initializers = {init.name for init in graph.initializer}
    readers = _consumers(graph)
    graph_outputs = {o.name for o in graph.output}

    def reached_layers(tensor: str) -> list[str] | None:
        if tensor in graph_outputs or not readers.get(tensor):
            return None
        layers = []
        for node in readers[tensor]:
            layer = _layer_of(node, qparams, initializers)
            if layer is not None and node.input[0] == tensor and tensor not in node.input[1:]:
                layers.append(layer)
            elif node.op_type in GRID_PRESERVING_OPS and node.input[0] == tensor:
                below = reached_layers(node.output[0])
                if below is None:
                    return None
                layers.extend(below)
            else:
                return None
        return layers

    # Points are placed on a node's first output (insert_qdq renames it): not on a graph input or
    # another output of a multi-output node (a Split), where a reading layer would lose its rounding.
    first_outputs = {n.output[0] for n in graph.node if n.output}
    points = {}
    for node in graph.node:
        layer = _layer_of(node, qparams, initializers)
        if layer is None:
            continue
        tensor, grid = node.input[0], qparams[layer].input_grid
        if qparams[layer].shared_input:  # rounded where it is made in PyTorch: every reader sees the grid
            if tensor not in first_outputs or points.get(tensor, grid) != grid:
                raise EffdlError(f"int8 export: the input of layer {layer}, which the model rounds where it is made, "
                                 "is no single output the graph can round there; export without --int8")
            points[tensor] = grid
        elif tensor not in points and tensor in first_outputs:
            # An input read only by quantized layers on one grid (a block's input feeding its conv and its
            # projection shortcut) is rounded once for all of them: one QuantizeLinear, exact.
            readers_grids = {qparams[name].input_grid for name in reached_layers(tensor) or []}
            if len(readers_grids) == 1:
                points[tensor] = readers_grids.pop()
        if qparams[layer].output_grid is not None:
            points[node.output[0]] = qparams[layer].output_grid  # the PyTorch layer rounds it there
            continue
        point = node.output[0]
        only_reader = readers.get(point, [])
        if len(only_reader) == 1 and only_reader[0].op_type == "Relu" and point not in graph_outputs:
            point = only_reader[0].output[0]
        layers = reached_layers(point)
        grids = {qparams[name].input_grid for name in layers or []}
        if len(grids) == 1:
            points[point] = grids.pop()
    return points


WEIGHT_CODES = ".weight_codes"  # suffix of each layer's uint8 weight initializer: `<layer>.quant.weight_codes`


def weight_integers(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """{layer name: its weight integers (int32, the int8 model's q in w = s * q)} of an int8 file
    written by `insert_qdq`, read back from the stored codes and their zero points."""
    arrays = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    integers = {}
    for name, codes in arrays.items():
        if name.endswith(WEIGHT_CODES):
            prefix = name.removesuffix(WEIGHT_CODES)
            (zero_point,) = np.unique(arrays[f"{prefix}.weight_zero_point"])  # one for every channel
            integers[prefix.removesuffix(".quant")] = codes.astype(np.int32) - int(zero_point)
    return integers


def insert_qdq(proto: onnx.ModelProto, qparams: dict[str, LayerQParams]) -> onnx.ModelProto:
    """Rewrite a float graph into QDQ form with the fake-quant model's scales.

    Each quantized layer gets its int8 weights (as uint8 codes, WEIGHT_ZERO_POINT) with a per-channel
    DequantizeLinear and a QuantizeLinear -> DequantizeLinear pair on its input; each point `output_quantization_points`
    finds gets a QuantizeLinear -> DequantizeLinear pair as well, so ONNX Runtime sees
    DQ -> Conv -> Q and can run the convolution on integers (QLinearConv).
    """
    graph = proto.graph
    initializers = {init.name: init for init in graph.initializer}
    initializer_names = set(initializers)
    output_points = output_quantization_points(graph, qparams)
    done: set[str] = set()
    replaced: set[str] = set()  # float weights now stored as integer codes
    nodes = []

    def add_qdq(source: str, target: str, prefix: str, scale: float, zero_point: int, lowest: int = 0,
                highest: int = 255) -> None:
        graph.initializer.extend([
            numpy_helper.from_array(np.array(scale, np.float32), f"{prefix}_scale"),
            numpy_helper.from_array(np.array(zero_point, np.uint8), f"{prefix}_zero_point"),
        ])
        nodes.append(helper.make_node("QuantizeLinear", [source, f"{prefix}_scale", f"{prefix}_zero_point"],
                                      [f"{prefix}_q"], name=f"{prefix}_q"))
        codes = f"{prefix}_q"
        if (lowest, highest) != UINT8_CODES:  # a grid of fewer codes saturates at its own ends
            graph.initializer.extend([
                numpy_helper.from_array(np.array(lowest, np.uint8), f"{prefix}_lowest"),
                numpy_helper.from_array(np.array(highest, np.uint8), f"{prefix}_highest"),
            ])
            nodes.append(helper.make_node("Clip", [codes, f"{prefix}_lowest", f"{prefix}_highest"],
                                          [f"{prefix}_clipped"], name=f"{prefix}_clip"))
            codes = f"{prefix}_clipped"
        nodes.append(helper.make_node("DequantizeLinear", [codes, f"{prefix}_scale", f"{prefix}_zero_point"],
                                      [target], name=f"{prefix}_dq"))

    for original in graph.node:
        node = onnx.NodeProto()
        node.CopyFrom(original)  # the graph's node list is rebuilt below
        name = _layer_of(node, qparams, initializer_names)
        if name is not None:
            q = qparams[name]
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = 1 if node.op_type == "Gemm" and not trans_b else 0
            weight = numpy_helper.to_array(initializers[node.input[1]])
            replaced.add(node.input[1])
            scale_shape = [-1 if d == axis else 1 for d in range(weight.ndim)]
            steps = weight / q.weight_scale.reshape(scale_shape)
            # The weight must still be the fake-quant model's: an exporter that folded an op into it
            # (a BatchNorm we could not fold first) would otherwise be clipped onto a grid it left.
            if steps.size and (np.abs(steps - np.round(steps)).max() > 1e-2 or np.abs(steps).max() > 128.5):
                raise EffdlError(
                    f"int8 export: the exported weight of layer {name} is no longer on its int8 grid (the exporter "
                    "folded another operation, such as a BatchNorm, into it); fold it first or export without --int8"
                )
            codes = (np.clip(np.round(steps), -128, 127) + WEIGHT_ZERO_POINT).astype(np.uint8)
            prefix = f"{name}.quant"
            graph.initializer.extend([
                numpy_helper.from_array(codes, f"{prefix}{WEIGHT_CODES}"),
                numpy_helper.from_array(q.weight_scale, f"{prefix}.weight_scale"),
                numpy_helper.from_array(np.full(len(q.weight_scale), WEIGHT_ZERO_POINT, np.uint8),
                                        f"{prefix}.weight_zero_point"),
            ])
            nodes.append(helper.make_node(
                "DequantizeLinear", [f"{prefix}{WEIGHT_CODES}", f"{prefix}.weight_scale", f"{prefix}.weight_zero_point"],
                [node.input[1]], name=f"{prefix}.weight_dq", axis=axis,
            ))
            # An input already on this layer's grid (a quantized output point) needs no second rounding.
            if output_points.get(node.input[0]) != q.input_grid:
                add_qdq(node.input[0], f"{prefix}.input_dq", f"{prefix}.input", *q.input_grid)
                node.input[0] = f"{prefix}.input_dq"
            done.add(name)
        point = node.output[0] if node.output and node.output[0] in output_points else None
        if point is not None:
            node.output[0] = f"{point}.float"
        nodes.append(node)
        if point is not None:
            add_qdq(f"{point}.float", point, f"{point}.quant", *output_points[point])
    missing = sorted(set(qparams) - done)
    if missing:
        raise EffdlError(f"int8 export could not find the ONNX node of layer(s) {', '.join(missing)}")
    del graph.node[:]
    graph.node.extend(nodes)
    survivors = [init for init in graph.initializer if init.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(survivors)
    onnx.checker.check_model(proto)
    return proto


def export_int8_verified(
    model: nn.Module,
    path: str | Path,
    calibration_images: torch.Tensor | None = None,
    *,
    check_images: torch.Tensor | None = None,
    calibration: str = "minmax",
    input_size: Sequence[int] | None = None,
    dynamic_batch: bool = True,
    opset: int | None = None,
    exporter: str = "auto",
) -> tuple[Path, OnnxCheck, nn.Module]:
    """Write an int8 QDQ ONNX model of `model` to `path`, verified; returns (path, check, int8 model).

    `model` is a float model (BatchNorm is folded, then it is quantized with Int8StaticConfig and
    calibrated on `calibration_images`, normalised NCHW training images, with `calibration` =
    minmax / percentile / mse) or a model already quantized on grids of at most 8 bits (`int8_model`).
    The file is checked against the int8 PyTorch model with `verify_onnx` on `check_images`
    (normalised images as the model sees them; default: the calibration images; with neither,
    random inputs, which the check's note states) before it takes the name `path`; on failure
    it is deleted and EffdlError says why. `input_size` (default the model's own), `dynamic_batch`,
    `opset` and `exporter` are those of `effdl.deploy.onnx.export_onnx`.
    """
    q = int8_model(model, calibration_images, calibration)
    float_model, qparams = dequantized_float_model(q)
    images = check_images if check_images is not None else calibration_images
    path, check = export_verified(float_model, path, reference=q, images=images, input_size=input_size,
                                  dynamic_batch=dynamic_batch, opset=opset, exporter=exporter,
                                  postprocess=lambda proto: insert_qdq(proto, qparams))
    return path, check, q


def export_int8_onnx(
    model: nn.Module,
    path: str | Path,
    calibration_images: torch.Tensor | None = None,
    *,
    check_images: torch.Tensor | None = None,
    verify: bool = True,
    calibration: str = "minmax",
    input_size: Sequence[int] | None = None,
    dynamic_batch: bool = True,
    opset: int | None = None,
    exporter: str = "auto",
) -> Path:
    """Write an int8 QDQ ONNX model of `model` to `path` and return the path.

    As `export_int8_verified` (which also returns the check), or unchecked with `verify=False`.
    """
    if verify:
        return export_int8_verified(model, path, calibration_images, check_images=check_images,
                                    calibration=calibration, input_size=input_size, dynamic_batch=dynamic_batch,
                                    opset=opset, exporter=exporter)[0]
    q = int8_model(model, calibration_images, calibration)
    float_model, qparams = dequantized_float_model(q)
    return export_onnx(float_model, path, input_size, dynamic_batch=dynamic_batch, opset=opset, exporter=exporter,
                       postprocess=lambda proto: insert_qdq(proto, qparams))


def optimized_op_counts(path: str | Path) -> dict[str, int]:
    """Op type -> count in the graph ONNX Runtime actually runs (CPU provider, all optimizations).

    Shows which QDQ patterns were fused into integer kernels (QLinearConv, QGemm...). A float Add
    that ONNX Runtime fused into a convolution (a FusedConv with a fourth, summed input) is counted
    under "FusedConv+Add" as well.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="effdl-ort-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3  # it warns that the saved graph is specific to this CPU
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        nodes = onnx.load(options.optimized_model_filepath).graph.node
        counts = Counter(node.op_type for node in nodes)
        counts["FusedConv+Add"] = sum(node.op_type == "FusedConv" and len(node.input) > 3 and bool(node.input[3])
                                      for node in nodes)
        return {op: count for op, count in counts.items() if count}
