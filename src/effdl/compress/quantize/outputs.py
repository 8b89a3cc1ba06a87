"""Which layers need their output quantized so that integer inference can run every layer on integers.

An integer runtime (ONNX Runtime's QLinearConv) runs a convolution on integers only when its
output is quantized as well. A layer whose output only reaches the inputs of other quantized
layers (directly or through ReLU / max-pooling / reshapes, which keep values on a quantization
grid) gets that for free: the next layer's input quantizer rounds it, and the exporter moves that
rounding up to the layer's output (see `effdl.deploy.int8`). A layer whose output also reaches a
float operation, such as a residual Add or a concatenation, needs its own output quantizer in
the PyTorch model too, or the exported graph would not compute what the PyTorch model computes.
`layers_with_float_readers` finds those layers in the torch.fx graph of the float model. The
model's output is not counted as a float reader: quantizing the logits gains nothing.

A convolution followed by its own BatchNorm2d (quantization-aware training keeps BatchNorm; the
exporter folds it into the convolution) outputs, as an integer runtime sees it, what the BatchNorm
outputs: the analysis looks from the BatchNorm on, and such a layer's output quantizer rounds the
BatchNorm's output (`batchnorms_after`; the quantizer sits in `OutputQuantAfter` in the model).

The other side of a residual Add is the block's input, which the block's first layer quantizes
for itself while the shortcut reads it in float: an integer runtime then adds in float, with a
dequantize and a quantize around every Add. `shared_input_producers` finds, for such a layer, the
parameterless module (the previous block's final ReLU) producing that input, so the quantizer can
round the tensor where it is made (`SharedInputQuant`) and every reader, the shortcut included,
sees the same integers: then the Add itself runs on integers (ONNX Runtime's QLinearAdd).

A tensor read by several layers (a downsampling block's input, read by its first convolution and
its projection shortcut) can be rounded once where it is made only if every reader rounds it on
one grid. Quantizers trained apart drift apart (LSQ learns each step), so `tied_input_readers`
pairs each later reader with the first one, whose input quantizer it then shares: the Add that made
the tensor keeps an integer output, and runs on integers.
"""

from __future__ import annotations

import warnings

import torch
from torch import fx, nn
from torch.nn import functional as F

# Monotone ops and reshapes: rounding before them, then again after them, gives what rounding
# after them alone gives (the ONNX side's list is in effdl/deploy/int8.py).
GRID_PRESERVING_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.MaxPool2d, nn.Identity, nn.Dropout, nn.Flatten)
GRID_PRESERVING_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.hardtanh, F.max_pool2d, F.dropout, torch.flatten}
GRID_PRESERVING_METHODS = {"relu", "relu_", "flatten", "view", "reshape"}
VANISHING_MODULES = (nn.Identity, nn.Dropout)  # no operation in an exported inference graph


class _LayerLeafTracer(fx.Tracer):
    """Keeps each candidate layer (and every torch.nn module) as one call in the graph."""

    def __init__(self, layers: set[str]):
        super().__init__()
        self.layers = layers

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name in self.layers or super().is_leaf_module(module, qualified_name)


def _grid_preserving(node: fx.Node, model: nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), GRID_PRESERVING_MODULES)
    if node.op == "call_function":
        return node.target in GRID_PRESERVING_FUNCTIONS
    return node.op == "call_method" and node.target in GRID_PRESERVING_METHODS


def _reaches_float_op(node: fx.Node, model: nn.Module, layers: set[str]) -> bool:
    for user in node.users:
        reads_as_input = bool(user.args) and user.args[0] is node
        if user.op == "output" or (user.op == "call_module" and user.target in layers and reads_as_input):
            continue
        if not (reads_as_input and _grid_preserving(user, model)) or _reaches_float_op(user, model, layers):
            return True
    return False


def _foldable_batchnorm(node: fx.Node, model: nn.Module, calls: dict[str, int]) -> fx.Node | None:
    """The BatchNorm2d node that reads `node` (a convolution) and nothing else reads, both called once
    and the BatchNorm with running statistics: the pair the exporter folds (see fold.find_conv_bn_pairs)."""
    users = list(node.users)
    if len(users) != 1 or not isinstance(model.get_submodule(node.target), nn.Conv2d):
        return None
    bn = users[0]
    if bn.op != "call_module" or not bn.args or bn.args[0] is not node:
        return None
    module = model.get_submodule(bn.target)
    if not isinstance(module, nn.BatchNorm2d) or module.running_mean is None:
        return None
    return bn if calls.get(node.target) == 1 and calls.get(bn.target) == 1 else None


def _module_calls(graph: fx.Graph) -> dict[str, int]:
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    return calls


def batchnorms_after(model: nn.Module, layers: list[str], graph: fx.Graph) -> dict[str, str]:
    """{layer: batchnorm} for the convolutions among `layers` followed by a BatchNorm2d that the
    int8 exporter folds into them: their output, as an integer runtime computes it, is that
    BatchNorm's. `graph`: `trace_layers(model, layers)`."""
    calls = _module_calls(graph)
    found = {}
    for node in graph.nodes:
        if node.op == "call_module" and node.target in layers:
            bn = _foldable_batchnorm(node, model, calls)
            if bn is not None:
                found[node.target] = bn.target
    return found


def trace_layers(model: nn.Module, layers: list[str]) -> fx.Graph | None:
    """The torch.fx graph of `model` with each of `layers` (and every torch.nn module) as one call,
    which both analyses below read; None, with a warning, when torch.fx cannot trace the model."""
    try:
        return _LayerLeafTracer(set(layers)).trace(model)
    except Exception as exc:  # noqa: BLE001  any tracing failure means: no graph to analyse
        warnings.warn(
            f"torch.fx could not trace {type(model).__name__} ({type(exc).__name__}); "
            "no output or shared input is quantized, and eval rounds biases without the BatchNorm the int8 "
            "export folds in (ONNX Runtime may then differ from PyTorch by a few rounding steps)",
            stacklevel=4,
        )
        return None


def layers_with_float_readers(model: nn.Module, layers: list[str], graph: fx.Graph) -> list[str]:
    """The names among `layers` whose output reaches an operation other than a layer in `layers`.

    Only ReLU-like activations, max-pooling, reshapes and identities are looked through, and a
    convolution's own BatchNorm2d (`batchnorms_after`). `graph`:
    `trace_layers(model, layers)` (when that fails, callers quantize no output: the int8 export then
    runs those convolutions in float).
    """
    candidates = set(layers)
    calls = _module_calls(graph)
    found = set()
    for node in graph.nodes:
        if node.op == "call_module" and node.target in candidates:
            output = _foldable_batchnorm(node, model, calls) or node
            if _reaches_float_op(output, model, candidates):
                found.add(node.target)
    return sorted(found, key=layers.index)


def tied_input_readers(model: nn.Module, layers: list[str], graph: fx.Graph) -> dict[str, str]:
    """{layer: first reader} for the layers among `layers` whose input (first argument) is the tensor
    an earlier layer of `layers` reads as its input, each layer called once. A caller ties only
    readers whose input quantizers are built alike (same bits and method). `graph`:
    `trace_layers(model, layers)`."""
    candidates = set(layers)
    calls = _module_calls(graph)
    first_reader: dict[fx.Node, str] = {}
    tied = {}
    for node in graph.nodes:
        if (node.op != "call_module" or node.target not in candidates or calls[node.target] != 1
                or not node.args or not isinstance(node.args[0], fx.Node)):
            continue
        owner = first_reader.setdefault(node.args[0], node.target)
        if owner != node.target:
            tied[node.target] = owner
    return tied


def shared_input_producers(
    model: nn.Module, layers: list[str], graph: fx.Graph, tied: dict[str, str] | None = None
) -> dict[str, str]:
    """{layer: producer} for the layers among `layers` whose input is also read by a float operation
    (a residual Add's shortcut), where that input is made by a parameterless module called once
    (a ReLU, not a function call or a module shared between calls) and no other layer in `layers`
    reads it, but those `tied` ({reader: layer}, see `tied_input_readers`) to the layer's input
    quantizer. Rounding the producer's output with that quantizer then changes nothing for the
    layer and puts the shortcut on the same grid. `graph`: `trace_layers(model, layers)`.
    """
    candidates = set(layers)
    tied = tied or {}
    calls = _module_calls(graph)
    shared = {}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in candidates or node.target in tied or not node.args:
            continue
        source = node.args[0]
        if not isinstance(source, fx.Node) or source.op != "call_module" or calls.get(source.target) != 1:
            continue
        producer = model.get_submodule(source.target)
        # An identity-like producer (a BatchNorm folded away, a removed block) vanishes from an exported
        # graph, which then rounds its input instead: not when that input is a layer's output, which
        # its own output quantizer may already round (on a grid of its own).
        feeds_from_layer = bool(source.args) and isinstance(source.args[0], fx.Node) and (
            source.args[0].op == "call_module" and source.args[0].target in candidates)
        if (source.target in candidates or (isinstance(producer, VANISHING_MODULES) and feeds_from_layer)
                or any(True for _ in producer.parameters()) or any(True for _ in producer.buffers())):
            continue
        readers = [u for u in source.users if u is not node]
        layer_readers = [u for u in readers if u.op == "call_module" and u.target in candidates
                         and tied.get(u.target) != node.target]
        if readers and not layer_readers and _reaches_float_op(source, model, candidates):
            shared[node.target] = source.target
    return shared
