"""int8 ONNX export: QuantizeLinear / DequantizeLinear (QDQ) around every quantized layer.

Approach: the int8 PyTorch model (Int8StaticConfig: symmetric per-channel int8 weights,
calibrated per-tensor uint8 activations, BatchNorm folded) is copied into a float model whose
layers hold the dequantized weights; that model goes through the project's fp32 exporter
(`effdl.deploy.onnx`), and a post-processing step rewrites the graph:
- each quantized weight becomes an int8 initializer with a per-channel DequantizeLinear (axis 0),
- each quantized layer's input goes through QuantizeLinear -> DequantizeLinear with the
  calibrated scale and zero point of its PyTorch activation quantizer.
The scales are exactly the fake-quant model's, so ONNX Runtime computes the same function as the
PyTorch fake-quant model (up to float accumulation order and ties in rounding), and ONNX Runtime
may fuse the QDQ patterns into integer kernels. Only 8-bit uniform layers can be exported.
"""

from __future__ import annotations

import copy
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
    """What a layer's QDQ nodes need: per-channel weight scales and the input's scale / zero point."""

    weight_scale: np.ndarray
    input_scale: float
    input_zero_point: int


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
        if not bool(layer.act_quantizer.ready):
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
        qparams[name] = LayerQParams(weight_scale, float(scale), int(zero_point))
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


def insert_qdq(proto: onnx.ModelProto, qparams: dict[str, LayerQParams]) -> onnx.ModelProto:
    """Rewrite a float graph: int8 weights with DequantizeLinear, QDQ on each quantized layer's input."""
    graph = proto.graph
    initializers = {init.name: init for init in graph.initializer}
    done: set[str] = set()
    replaced: set[str] = set()  # float weights now stored as int8
    nodes = []
    for original in graph.node:
        node = onnx.NodeProto()
        node.CopyFrom(original)  # the graph's node list is rebuilt below
        name = node.input[1].removesuffix(".weight") if node.op_type in WEIGHT_OPS and len(node.input) > 1 else None
        if name not in qparams or node.input[1] not in initializers:
            nodes.append(node)
            continue
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
            numpy_helper.from_array(np.array(q.input_scale, np.float32), f"{prefix}.input_scale"),
            numpy_helper.from_array(np.array(q.input_zero_point, np.uint8), f"{prefix}.input_zero_point"),
        ])
        nodes.append(helper.make_node(
            "DequantizeLinear", [f"{prefix}.weight_int8", f"{prefix}.weight_scale", f"{prefix}.weight_zero_point"],
            [node.input[1]], name=f"{prefix}.weight_dq", axis=axis,
        ))
        source = node.input[0]
        nodes.append(helper.make_node(
            "QuantizeLinear", [source, f"{prefix}.input_scale", f"{prefix}.input_zero_point"],
            [f"{prefix}.input_q"], name=f"{prefix}.input_q",
        ))
        nodes.append(helper.make_node(
            "DequantizeLinear", [f"{prefix}.input_q", f"{prefix}.input_scale", f"{prefix}.input_zero_point"],
            [f"{prefix}.input_dq"], name=f"{prefix}.input_dq",
        ))
        node.input[0] = f"{prefix}.input_dq"
        nodes.append(node)
        done.add(name)
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
) -> Path:
    """Write an int8 QDQ ONNX model of `model` to `path` and return the path.

    `model` is either a float model (BatchNorm is folded, then it is quantized with
    Int8StaticConfig and calibrated on `calibration_images`, normalised NCHW training images,
    with `calibration` = minmax / percentile / mse) or a model already quantized that way.
    """
    q = int8_model(model, calibration_images, calibration)
    float_model, qparams = dequantized_float_model(q)
    return export_onnx(float_model, path, input_size, postprocess=lambda proto: insert_qdq(proto, qparams))
