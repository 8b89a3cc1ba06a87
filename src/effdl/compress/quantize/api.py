"""The quantization verbs: `quantize_(model, config)`, `calibrate`, and their checkpoint replays.

    quantize_(model, FakeQuantConfig(weight_bits=4, act_bits=4, method="lsq"))
    quantize_(model, Int8StaticConfig(calibration="mse")); calibrate(model, images)
    quantize_(model, Float16Config("bfloat16"))

Only plain nn.Conv2d and nn.Linear layers are quantized; other layers holding weights (Conv1d,
ConvTranspose2d, Embedding...) are skipped and listed in one warning, never mis-quantized.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from effdl.compress.quantize.config import (
    BinaryConnectConfig,
    FakeQuantConfig,
    Float16Config,
    Int8StaticConfig,
    Int8WeightOnlyConfig,
    KMeansConfig,
    TernaryConfig,
    XnorConfig,
)
from effdl.compress.quantize.grids import integer_layer_spec
from effdl.compress.quantize.layers import (
    QUANTIZABLE, OutputQuantAfter, SharedInputQuant, is_quantized_layer, quantize_layer,
)
from effdl.compress.quantize.outputs import (
    batchnorms_after, layers_with_float_readers, shared_input_producers, tied_input_readers, trace_layers,
)
from effdl.compress.quantize.quantizers import RangeAct, LazyAct
from effdl.core.configs import config_from_dict, config_to_dict, dispatch, register_handler
from effdl.core.edits import model_transforms, record_transform, register_transform
from effdl.core.hooks import Callback
from effdl.core.modules import eval_mode, replace_submodule
from effdl.core.selection import match_patterns
from effdl.data import ImageDataset
from effdl.data.loader import BatchLoader
from effdl.errors import EffdlError
from effdl.measure.bits import verify_weight_bits

MIN_CALIBRATION_IMAGES = 64
FilterFn = Callable[[nn.Module, str], bool]
_HALF_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every quantized layer of `model`, by name."""
    return {name: m for name, m in model.named_modules() if is_quantized_layer(m)}


def is_quantized(model: nn.Module) -> bool:
    """True if any layer is quantized or the model was converted to half precision."""
    return bool(quantized_layers(model)) or getattr(model, "effdl_half_dtype", None) is not None


def _skipped_layers(model: nn.Module) -> list[str]:
    skipped = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        has_matrix = isinstance(weight, torch.Tensor) and weight.dim() >= 2
        if has_matrix and type(module) not in QUANTIZABLE and not is_quantized_layer(module):
            skipped.append(f"{name} ({type(module).__name__})")
    return skipped


def quantize_(model: nn.Module, config: Any, filter_fn: FilterFn | None = None) -> nn.Module:
    """Quantize `model` in place as `config` says and return it.

    The one quantization verb: it dispatches on the config's type to the handler registered for
    it (`effdl.core.configs.register_handler`), so a new method is a config and a handler, and no
    table here changes. filter_fn(module, name) -> bool restricts which Conv2d / Linear layers are
    quantized (layer-spec configs). Raises EffdlError if the model is already quantized, `config`
    is not a quantize config, nothing can be quantized, or an override pattern of the config
    matches no Conv2d / Linear layer.
    """
    if is_quantized(model):
        raise EffdlError("this model is already quantized; start again from the float (unquantized) model")
    return dispatch("quantize", config, model, filter_fn)


@register_handler(Float16Config)
def _quantize_half(config: Float16Config, model: nn.Module, filter_fn: FilterFn | None = None) -> nn.Module:
    # Half precision converts the whole model: a layer filter has nothing to choose.
    return to_half_(model, config.dtype)


def quantize_by_layer_spec(config: Any, model: nn.Module, filter_fn: FilterFn | None = None) -> nn.Module:
    """The handler of every config with `layer_spec(name, module, position)`: replace each chosen
    Conv2d / Linear by a quantized layer built from its spec, and record the specs for replay.

    A new layer-spec method registers this as its handler: `register_handler(MyConfig)(quantize_by_layer_spec)`.
    """
    candidates = [(n, m) for n, m in model.named_modules() if type(m) in QUANTIZABLE]
    # An override that names no layer (a typo) would silently quantize at the default bits.
    match_patterns([n for n, _ in candidates], getattr(config, "overrides", None) or {},
                   what="quantizable layer (Conv2d or Linear)")
    skipped = _skipped_layers(model)
    if skipped:
        # stacklevel 4: the caller of quantize_ (through dispatch)
        warnings.warn(f"quantize_: unsupported layer types left in float: {', '.join(skipped)}", stacklevel=4)
    specs: dict[str, dict[str, Any]] = {}
    for index, (name, module) in enumerate(candidates):
        if filter_fn is not None and not filter_fn(module, name):
            continue
        position = "first" if index == 0 else "last" if index == len(candidates) - 1 else "middle"
        spec = config.layer_spec(name, module, position)
        if spec is not None:
            specs[name] = spec
    if not specs:
        raise EffdlError("no Conv2d or Linear layer to quantize (check filter_fn and the model)")
    # Layers that quantize their input may run on integers: which BatchNorm folds into each, and
    # (quantize_outputs) where outputs and shared inputs need rounding. One trace for the three.
    # Sign / DoReFa activations and binary weights are on no integer grid: rounding outputs for them
    # would only destroy information (a sign on a ReLU output is constant) for an export that refuses them.
    integer = [name for name, spec in specs.items() if integer_layer_spec(spec)]
    graph = trace_layers(model, list(specs)) if integer else None
    if graph is not None:
        for name, batchnorm in batchnorms_after(model, list(specs), graph).items():
            if name in integer:
                specs[name] = {**specs[name], "batchnorm": batchnorm}
    if graph is not None and getattr(config, "quantize_outputs", False):
        for name in layers_with_float_readers(model, list(specs), graph):
            if name in integer:
                specs[name] = {**specs[name], "output": dict(specs[name]["act"])}
        tied = {reader: owner for reader, owner in tied_input_readers(model, list(specs), graph).items()
                if reader in integer and owner in integer and specs[reader]["act"] == specs[owner]["act"]}
        for reader, owner in tied.items():
            specs[reader] = {**specs[reader], "shares_act_with": owner}
        for name, producer in shared_input_producers(model, list(specs), graph, tied).items():
            if name in integer:
                specs[name] = {**specs[name], "shares_input": producer}
    _apply_specs(model, specs, fit=True)
    record = {"layers": specs}
    if getattr(type(config), "config_name", None) is not None:
        record["technique"] = config_to_dict(config)  # as data, so a checkpoint says how it was made
    record_transform(model, "quantize", record)
    return model


for _layer_spec_config in (Int8WeightOnlyConfig, Int8StaticConfig, FakeQuantConfig, BinaryConnectConfig, XnorConfig,
                           TernaryConfig, KMeansConfig):
    register_handler(_layer_spec_config)(quantize_by_layer_spec)


def _apply_specs(model: nn.Module, specs: dict[str, dict[str, Any]], fit: bool) -> None:
    for name, spec in specs.items():
        replace_submodule(model, name, quantize_layer(model.get_submodule(name), spec, fit=fit))
    for name, spec in specs.items():
        if spec.get("shares_act_with"):  # one input quantizer, registered in both layers, trains once
            owner = spec["shares_act_with"]
            if owner not in specs or specs[owner].get("act") != spec.get("act"):
                raise EffdlError(f"quantized layer {name} shares the input quantizer of '{owner}', "
                                 "which is no quantized layer with the same activation quantizer")
            model.get_submodule(name).act_quantizer = model.get_submodule(owner).act_quantizer
        if spec.get("shares_input"):  # the producer's output is rounded by this layer's input quantizer
            producer = spec["shares_input"]
            module = _module_named(model, producer, name, "the maker of its input")
            replace_submodule(model, producer, SharedInputQuant(module, model.get_submodule(name)))
        if spec.get("batchnorm"):  # folded into the layer on export (see QuantMixin.quantized_output)
            layer = model.get_submodule(name)
            batchnorm = _module_named(model, spec["batchnorm"], name, "its BatchNorm")
            if not isinstance(batchnorm, nn.BatchNorm2d) or batchnorm.running_var is None:
                raise EffdlError(f"quantized layer {name} names '{spec['batchnorm']}' as its BatchNorm, which is "
                                 f"a {type(batchnorm).__name__}, not a BatchNorm2d with running statistics")
            object.__setattr__(layer, "folded_batchnorm", batchnorm)  # referenced, not registered
            if spec.get("output"):  # the layer's output quantizer rounds the BatchNorm's output
                replace_submodule(model, spec["batchnorm"], OutputQuantAfter(batchnorm, layer))
    clip_latent_weights_(model)


def _module_named(model: nn.Module, path: str, layer: str, role: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise EffdlError(f"quantized layer {layer} names '{path}' as {role}, which the architecture lacks") from None


@register_transform("quantize")
def _replay_quantize(
    model: nn.Module, layers: dict[str, dict[str, Any]], technique: dict[str, Any] | None = None
) -> None:
    # The layer specs rebuild the model; `technique` (the config as data) is read by quantization_config.
    _apply_specs(model, layers, fit=False)


def quantization_config(model: nn.Module) -> Any | None:
    """The quantize config `model` was quantized with, read back from its recorded edits (also
    after a checkpoint round trip); None for a float model or one quantized before configs were
    recorded. Half precision reads as a Float16Config.
    Raises EffdlError if the record names a config this effdl cannot read (newer, unknown).
    """
    for step in reversed(model_transforms(model)):
        if step["name"] == "quantize" and "technique" in step["config"]:
            return config_from_dict(step["config"]["technique"])
        if step["name"] == "half":
            return Float16Config(step["config"]["dtype"])
    return None


def verify_model_bits(model: nn.Module) -> dict[str, int]:
    """Check every quantized layer holds no more distinct weights than it declares; name -> bits."""
    layers = quantized_layers(model)
    for name, layer in layers.items():
        verify_weight_bits(layer, name)
    return {name: layer.weight_bits for name, layer in layers.items()}


@torch.no_grad()
def clip_latent_weights_(model: nn.Module) -> None:
    """Clip the latent float weights of BinaryConnect layers to [-1, 1] (call after each step)."""
    for layer in quantized_layers(model).values():
        if getattr(layer.weight_quantizer, "clip_latent", False):
            layer.weight.clamp_(-1, 1)


class QuantizationCallback(Callback):
    """Trainer callback for quantization-aware training: keeps BinaryConnect latent weights in [-1, 1]."""

    def on_after_step(self, trainer: Any) -> None:
        clip_latent_weights_(trainer.model)


# ------------------------------------------------------------------------------ half precision


def _cast_input(dtype: torch.dtype):
    def hook(module: nn.Module, args: tuple) -> tuple:
        return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    return hook


def _make_half(model: nn.Module, dtype_name: str) -> nn.Module:
    model.to(_HALF_DTYPES[dtype_name])
    model.register_forward_pre_hook(_cast_input(_HALF_DTYPES[dtype_name]))
    model.effdl_half_dtype = dtype_name
    return model


def to_half_(model: nn.Module, dtype: str = "float16") -> nn.Module:
    """Convert every parameter and buffer to float16 / bfloat16; inputs are cast on the way in."""
    Float16Config(dtype)  # validates the name
    _make_half(model, dtype)
    record_transform(model, "half", {"dtype": dtype})
    return model


@register_transform("half")
def _replay_half(model: nn.Module, dtype: str) -> None:
    _make_half(model, dtype)


# --------------------------------------------------------------------------------- calibration


def calibration_images(data: ImageDataset, count: int = 512, seed: int = 0) -> torch.Tensor:
    """`count` normalised training images drawn at random (seeded), as the model takes them; all of
    them, with a warning, when the training split has fewer (a model fine-tuned on a subset)."""
    if count > len(data.train_labels):
        warnings.warn(f"calibrating on all {len(data.train_labels)} training images (fewer than the {count} "
                      "calibration images)",
                      stacklevel=2)
        count = len(data.train_labels)
    order = torch.randperm(len(data.train_labels), generator=torch.Generator().manual_seed(seed))[:count]
    loader = BatchLoader.for_split(data, "train")
    return loader.normalize(data.train_images[order])


@torch.no_grad()
def calibrate(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> nn.Module:
    """Set every activation quantizer's range from `images` (normalised training images, NCHW).

    Calibrated quantizers (Int8StaticConfig, QAT "minmax") use their own method: minmax (observed
    extremes), percentile (a histogram quantile) or mse (the range minimising the expected
    squared error over the histogram). LSQ / PACT / DoReFa quantizers initialise their step,
    clipping level and signedness from the first batch. Runs in eval mode (BatchNorm untouched).
    """
    observers = [m for m in model.modules() if isinstance(m, RangeAct)]
    lazy = [m for m in model.modules() if isinstance(m, LazyAct)]
    if not observers and not lazy:
        raise EffdlError("nothing to calibrate: the model has no activation quantizers")
    if len(images) < MIN_CALIBRATION_IMAGES:
        raise EffdlError(
            f"calibration needs at least {MIN_CALIBRATION_IMAGES} images (a few hundred is best), got {len(images)}"
        )
    device = next(model.parameters()).device
    for quantizer in lazy:
        quantizer.reset()
    passes = ["range"] + (["histogram"] if any(o.method in ("percentile", "mse") for o in observers) else [])
    try:
        with eval_mode(model):
            for phase in passes:
                for observer in observers:
                    observer.observing = phase
                for start in range(0, len(images), batch_size):
                    model(images[start : start + batch_size].to(device))
    except BaseException:
        for observer in observers:
            observer.observing = None
        raise
    for observer in observers:
        observer.finish_calibration()
    return model
