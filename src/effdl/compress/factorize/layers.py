"""The modules a factorized layer becomes, their recorded specs, and the checkpoint replay.

A factorized layer is a `Factorized` (an nn.Sequential of ordinary, smaller nn.Conv2d / nn.Linear
modules), so every counter, exporter and quantizer sees real layers with their real groups and
kernels: the MACs that run are the MACs that are counted. Each `factorize_` call records one
"factorize" edit ({layer name: {"method", "modules": [spec, ...]}}) whose replay rebuilds the
same chain on a freshly built model, so a factorized checkpoint reloads with its shapes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from effdl.core.edits import register_transform
from effdl.core.modules import replace_submodule
from effdl.errors import EffdlError

TRANSFORM = "factorize"


class Factorized(nn.Sequential):
    """A trained layer replaced by a chain of smaller layers; `method` says how ("tucker2"...)."""

    def __init__(self, *layers: nn.Module, method: str):
        super().__init__(*layers)
        self.method = method

    def extra_repr(self) -> str:
        return f"method={self.method}"


def conv_spec(in_channels: int, out_channels: int, kernel: tuple[int, int], *, stride=(1, 1), padding=(0, 0),
              dilation=(1, 1), groups: int = 1, bias: bool = False) -> dict[str, Any]:
    """The JSON spec of an nn.Conv2d (zero padding) that `build_module` turns back into one."""
    return {"type": "conv2d", "in": in_channels, "out": out_channels, "kernel": list(kernel), "stride": list(stride),
            "padding": list(padding), "dilation": list(dilation), "groups": groups, "bias": bias}


def linear_spec(in_features: int, out_features: int, bias: bool = False) -> dict[str, Any]:
    """The JSON spec of an nn.Linear."""
    return {"type": "linear", "in": in_features, "out": out_features, "bias": bias}


def build_module(spec: dict[str, Any], like: torch.Tensor) -> nn.Module:
    """An nn.Conv2d / nn.Linear as `spec` says, on `like`'s device and dtype (weights uninitialised)."""
    kwargs = {"device": like.device, "dtype": like.dtype}
    try:
        if spec["type"] == "conv2d":
            return nn.Conv2d(spec["in"], spec["out"], tuple(spec["kernel"]), stride=tuple(spec["stride"]),
                             padding=tuple(spec["padding"]), dilation=tuple(spec["dilation"]), groups=spec["groups"],
                             bias=spec["bias"], **kwargs)
        if spec["type"] == "linear":
            return nn.Linear(spec["in"], spec["out"], bias=spec["bias"], **kwargs)
    except (KeyError, TypeError, ValueError) as exc:
        raise EffdlError(f"malformed factorized layer spec {spec!r:.160} ({exc})") from None
    raise EffdlError(f"unknown factorized layer type {spec.get('type')!r}")


def spec_of(module: nn.Module) -> dict[str, Any]:
    """The spec of an existing nn.Conv2d / nn.Linear (what `build_module` rebuilds)."""
    if isinstance(module, nn.Conv2d):
        return conv_spec(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                         padding=module.padding, dilation=module.dilation, groups=module.groups,
                         bias=module.bias is not None)
    if isinstance(module, nn.Linear):
        return linear_spec(module.in_features, module.out_features, module.bias is not None)
    raise EffdlError(f"cannot describe a {type(module).__name__} as a factorized layer")


def make_factorized(method: str, specs: list[dict[str, Any]], weights: list[torch.Tensor],
                    bias: torch.Tensor | None, like: torch.Tensor) -> Factorized:
    """A `Factorized` chain from specs and their weights; `bias` (the original layer's) goes on the
    last module, whose spec must have one exactly when `bias` is given."""
    modules = [build_module(spec, like) for spec in specs]
    with torch.no_grad():
        for module, weight in zip(modules, weights):
            if tuple(module.weight.shape) != tuple(weight.shape):
                raise EffdlError(f"internal error: factor of shape {tuple(weight.shape)} for a "
                                 f"{tuple(module.weight.shape)} weight")
            module.weight.copy_(weight)
        if bias is not None:
            modules[-1].bias.copy_(bias)
    return Factorized(*modules, method=method)


@register_transform(TRANSFORM)
def replay_factorize(model: nn.Module, layers: dict[str, dict[str, Any]]) -> nn.Module:
    """Replay: replace each recorded layer by its `Factorized` chain of the recorded shapes (the
    weights are placeholders the checkpoint's tensors then fill)."""
    if not isinstance(layers, dict):
        raise EffdlError(f"malformed factorize record in the checkpoint: {layers!r:.160}")
    for name, record in layers.items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise EffdlError(f"factorized checkpoint names layer '{name}', which the architecture lacks") from None
        like = next(old.parameters(), None)
        like = like if like is not None else torch.empty(0)
        modules = [build_module(spec, like) for spec in record.get("modules", [])]
        if not modules:
            raise EffdlError(f"factorized checkpoint records no modules for layer '{name}'")
        replace_submodule(model, name, Factorized(*modules, method=str(record.get("method", "?"))))
    return model
