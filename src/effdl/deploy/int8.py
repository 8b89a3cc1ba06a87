"""int8 ONNX export: QuantizeLinear / DequantizeLinear (QDQ) placed so ONNX Runtime runs integer kernels.

Approach: the int8 PyTorch model (Int8StaticConfig: symmetric per-channel int8 weights,
calibrated per-tensor uint8 activations, BatchNorm folded) is copied into a float model whose
layers hold the dequantized weights; that model goes through the project's fp32 exporter
(`effdl.deploy.onnx`), and a post-processing step rewrites the graph:
- each quantized weight becomes an int8 initializer with a per-channel DequantizeLinear (axis 0),
- each quantized layer's input goes through QuantizeLinear -> DequantizeLinear with the
  calibrated scale and zero point of its PyTorch activation quantizer,
- each quantized layer's output goes through QuantizeLinear -> DequantizeLinear too: with its
  own output quantizer's grid when it has one (layers feeding a residual Add), otherwise with the
  grid of the layers it feeds, where that is exact (see `output_quantization_points`).
ONNX Runtime only turns DQ -> Conv -> Q into an integer convolution (QLinearConv) when the
output is quantized; with the three rules every convolution of a ResNet becomes one.
The scales are exactly the fake-quant model's, so ONNX Runtime computes the same function as the
PyTorch fake-quant model up to rounding ties: its integer kernels requantize with their own
arithmetic, and float accumulation order differs. Only 8-bit uniform layers can be exported.

Measured with `effdl bench MODEL --int8 --batch-sizes 1 --threads 1` (2026-11-22, 2-core CPU with
AVX512-VNNI, other jobs running): resnet18 at 32x32, fp32 ONNX 22.7 ms -> int8 8.5 ms (2.7x),
file 44.7 -> 11.3 MB; resnet20 0.89 -> 0.55 ms (1.6x). On very small models (resnet20 at width
0.25: 0.34 -> 0.68 ms) the Q/DQ and layout changes cost more than the integer convolutions save.
"""

from __future__ import annotations

import copy
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
from effdl.compress.quantize.quantizers import MinMaxWeight, RangeAct
from effdl.deploy.onnx import DEFAULT_INPUT_SIZE, export_onnx
from effdl.errors import EffdlError

WEIGHT_OPS = {"Conv", "Gemm"}


@dataclass(frozen=True)
class LayerQParams:
    """What a layer's QDQ nodes need: per-channel weight scales, the input's (and output's) grid."""

    weight_scale: np.ndarray
    input_scale: float
    input_zero_point: int
    output_grid: tuple[float, int] | None = None  # (scale, zero point) when the layer quantizes its output


def int8_model(model: nn.Module, calibration_images: torch.Tensor | None, calibration: str = "minmax") -> nn.Module:
    """An int8 fake-quant copy of `model`: float models are BN-folded, quantized and calibrated."""
    if not is_quantized(model):
        if calibration_images is None:
            raise EffdlError("int8 export of a float model needs calibration images")
        q = copy.deepcopy(model).eval()
        fold_batchnorm(q)
        quantize_(q, Int8StaticConfig(calibration=calibration))
        return calibrate(q, calibration_images)
    for name, layer in quantized_layers(model).items():
        uniform_weight = isinstance(layer.weight_quantizer, MinMaxWeight) and layer.weight_bits == 8
        uniform_act = isinstance(layer.act_quantizer, RangeAct) and layer.act_bits == 8
        if not (uniform_weight and uniform_act and layer.weight_per_channel):
            raise EffdlError(
                f"layer {name} is not int8 static (weights {layer.weight_bits} bits, activations {layer.act_bits}); "
                "export the float model with calibration images, or one quantized with Int8StaticConfig"
            )
        output = layer.output_quantizer
        if output is not None and not (isinstance(output, RangeAct) and output.bits == 8):
            raise EffdlError(f"layer {name} quantizes its output to {output.bits} bits; int8 export needs 8")
        if not all(bool(q.ready) for q in (layer.act_quantizer, output) if q is not None):
            raise EffdlError(f"layer {name} is not calibrated: run calibrate(model, images) first")
    return model


def dequantized_float_model(model: nn.Module) -> tuple[nn.Module, dict[str, LayerQParams]]:
    """A float copy with plain layers holding the dequantized weights, and each layer's qparams."""
    float_model = copy.deepcopy(model).eval()
    qparams = {}
    for name, layer in quantized_layers(float_model).items():
        with torch.no_grad():
            weight = layer.quantized_weight().detach().clone()
            weight_scale = layer.weight_quantizer.scale(layer.weight).numpy().astype(np.float32)
        scale, zero_point = layer.act_quantizer.qparams()
        output_grid = layer.output_quantizer.qparams() if layer.output_quantizer is not None else None
        qparams[name] = LayerQParams(weight_scale, float(scale), int(zero_point), output_grid)
        if isinstance(layer, nn.Conv2d):
            plain = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                              layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode)
        else:
            plain = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None)
        plain.weight.data.copy_(weight)
        if layer.bias is not None:
            plain.bias.data.copy_(layer.bias.detach())
        parent_name, _, child = name.rpartition(".")
        setattr(float_model.get_submodule(parent_name) if parent_name else float_model, child, plain)
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
) -> dict[str, tuple[float, int]]:
    """Where each quantized layer's output is quantized: tensor -> (scale, zero point).

    A layer with its own output quantizer (`Int8StaticConfig(quantize_outputs=True)`) is
    quantized at its output with that quantizer's grid, as in PyTorch. Any other layer's output
    is quantized only where that leaves the function unchanged: at its output, or at the output
    of the Relu that is its only reader, when every path from there runs through grid-preserving
    ops only and ends at the data input of quantized layers that all share one input grid. Those
    layers' input quantizers round these values anyway, and relu / max / clip are monotone, so
    rounding first gives exactly the same numbers. Other outputs (reaching a residual Add, an
    average pool or the graph output) stay float.
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

    points = {}
    for node in graph.node:
        layer = _layer_of(node, qparams, initializers)
        if layer is None:
            continue
        if qparams[layer].output_grid is not None:
            points[node.output[0]] = qparams[layer].output_grid  # the PyTorch layer rounds it there
            continue
        point = node.output[0]
        only_reader = readers.get(point, [])
        if len(only_reader) == 1 and only_reader[0].op_type == "Relu" and point not in graph_outputs:
            point = only_reader[0].output[0]
        layers = reached_layers(point)
        grids = {(qparams[name].input_scale, qparams[name].input_zero_point) for name in layers or []}
        if len(grids) == 1:
            points[point] = grids.pop()
    return points


def insert_qdq(proto: onnx.ModelProto, qparams: dict[str, LayerQParams]) -> onnx.ModelProto:
    """Rewrite a float graph into QDQ form with the fake-quant model's scales.

    Each quantized layer gets int8 weights with a per-channel DequantizeLinear and a
    QuantizeLinear -> DequantizeLinear pair on its input; each point `output_quantization_points`
    finds gets a QuantizeLinear -> DequantizeLinear pair as well, so ONNX Runtime sees
    DQ -> Conv -> Q and can run the convolution on integers (QLinearConv).
    """
    graph = proto.graph
    initializers = {init.name: init for init in graph.initializer}
    initializer_names = set(initializers)
    output_points = output_quantization_points(graph, qparams)
    done: set[str] = set()
    replaced: set[str] = set()  # float weights now stored as int8
    nodes = []

    def add_qdq(source: str, target: str, prefix: str, scale: float, zero_point: int) -> None:
        graph.initializer.extend([
            numpy_helper.from_array(np.array(scale, np.float32), f"{prefix}_scale"),
            numpy_helper.from_array(np.array(zero_point, np.uint8), f"{prefix}_zero_point"),
        ])
        nodes.append(helper.make_node("QuantizeLinear", [source, f"{prefix}_scale", f"{prefix}_zero_point"],
                                      [f"{prefix}_q"], name=f"{prefix}_q"))
        nodes.append(helper.make_node("DequantizeLinear", [f"{prefix}_q", f"{prefix}_scale", f"{prefix}_zero_point"],
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
            int8 = np.clip(np.round(weight / q.weight_scale.reshape(scale_shape)), -127, 127).astype(np.int8)
            prefix = f"{name}.quant"
            graph.initializer.extend([
                numpy_helper.from_array(int8, f"{prefix}.weight_int8"),
                numpy_helper.from_array(q.weight_scale, f"{prefix}.weight_scale"),
                numpy_helper.from_array(np.zeros(len(q.weight_scale), np.int8), f"{prefix}.weight_zero_point"),
            ])
            nodes.append(helper.make_node(
                "DequantizeLinear", [f"{prefix}.weight_int8", f"{prefix}.weight_scale", f"{prefix}.weight_zero_point"],
                [node.input[1]], name=f"{prefix}.weight_dq", axis=axis,
            ))
            # An input already on this layer's grid (a quantized output point) needs no second rounding.
            if output_points.get(node.input[0]) != (q.input_scale, q.input_zero_point):
                add_qdq(node.input[0], f"{prefix}.input_dq", f"{prefix}.input", q.input_scale, q.input_zero_point)
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


def export_int8_onnx(
    model: nn.Module,
    path: str | Path,
    calibration_images: torch.Tensor | None = None,
    *,
    calibration: str = "minmax",
    input_size: Sequence[int] = DEFAULT_INPUT_SIZE,
    dynamic_batch: bool = True,
    opset: int | None = None,
    exporter: str = "auto",
) -> Path:
    """Write an int8 QDQ ONNX model of `model` to `path` and return the path.

    `model` is either a float model (BatchNorm is folded, then it is quantized with
    Int8StaticConfig and calibrated on `calibration_images`, normalised NCHW training images,
    with `calibration` = minmax / percentile / mse) or a model already quantized that way.
    `dynamic_batch`, `opset` and `exporter` are those of `effdl.deploy.onnx.export_onnx`.
    """
    q = int8_model(model, calibration_images, calibration)
    float_model, qparams = dequantized_float_model(q)
    return export_onnx(float_model, path, input_size, dynamic_batch=dynamic_batch, opset=opset, exporter=exporter,
                       postprocess=lambda proto: insert_qdq(proto, qparams))


def optimized_op_counts(path: str | Path) -> dict[str, int]:
    """Op type -> count in the graph ONNX Runtime actually runs (CPU provider, all optimizations).

    Shows which QDQ patterns were fused into integer kernels (QLinearConv, QGemm...).
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="effdl-ort-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3  # it warns that the saved graph is specific to this CPU
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        return dict(Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node))
