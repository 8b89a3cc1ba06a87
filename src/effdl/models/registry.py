"""Model registry: every architecture is a named factory; `create_model` builds one by name.

Factories are registered with `@register_model`. A model built here remembers how it was built
(`model.effdl_spec = {"name": ..., "kwargs": {...}}`) so that checkpoints can rebuild it.
Names with a `tv:` prefix build torchvision classification models (see `torchvision_models.py`).

A trained model also remembers the data it was trained for (`model.effdl_data`, see `data_meta`):
input shape, normalisation and class names, so every command measures, exports and evaluates it
at its own size and deployed copies can be fed correctly.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from effdl.errors import EffdlError, unknown_name_error

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_TV_PREFIX = "tv:"


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None):
    """Register a model factory under `name` (default: the function's name)."""

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or f.__name__
        if key in _REGISTRY:
            raise ValueError(f"model '{key}' registered twice")
        _REGISTRY[key] = f
        return f

    return wrap(fn) if fn is not None else wrap


def list_models() -> list[str]:
    """Names of every registered (non-torchvision) model, sorted."""
    return sorted(_REGISTRY)


def model_factory(name: str) -> Callable[..., nn.Module]:
    if name.startswith(_TV_PREFIX):
        from effdl.models.torchvision_models import torchvision_factory

        return torchvision_factory(name[len(_TV_PREFIX):])
    if name not in _REGISTRY:
        raise unknown_name_error("model", name, _REGISTRY)
    return _REGISTRY[name]


def check_model_options(name: str, kwargs: dict[str, Any]) -> Callable[..., nn.Module]:
    """The factory of model `name` after checking its keyword options (EffdlError for an unknown
    model, with close names, or an option its factory does not take), without building anything."""
    factory = model_factory(name)
    accepted = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = [k for k in kwargs if k not in accepted and not takes_any]
    if unknown:
        raise EffdlError(
            f"model '{name}' has no option {', '.join(unknown)}; "
            f"options: {', '.join(k for k in accepted if k != 'num_classes') or 'none'}"
        )
    return factory


def create_model(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build model `name` for `num_classes` classes; extra kwargs go to its factory."""
    factory = check_model_options(name, kwargs)
    model = factory(num_classes=num_classes, **kwargs)
    model.effdl_spec = {"name": name, "kwargs": {"num_classes": num_classes, **kwargs}}
    return model


def create_model_for_data(name: str, num_classes: int, options: dict[str, Any], dataset: str = "the data") -> nn.Module:
    """`create_model` for the `num_classes` classes of `dataset`, with a config's model options
    (`model_kwargs`), which may repeat num_classes (a checkpoint's recorded spec does). Raises
    EffdlError when the repeated count differs from the data's: the classes come from the data."""
    options = dict(options)
    repeated = options.pop("num_classes", num_classes)
    if repeated != num_classes:
        raise EffdlError(f"model option num_classes={repeated!r} differs from the {num_classes} classes of {dataset}; "
                         "leave it out: the number of classes comes from the data")
    return create_model(name, num_classes=num_classes, **options)


def model_spec(model: nn.Module) -> dict[str, Any] | None:
    """How `model` was built ({"name", "kwargs"}), or None if not built by `create_model`."""
    return getattr(model, "effdl_spec", None)


DEFAULT_INPUT_SIZE = (3, 32, 32)  # C, H, W of CIFAR images: the size of a model that records none


def data_meta(model: nn.Module) -> dict[str, Any] | None:
    """The data `model` was trained for, or None if it records none.

    A dict with keys "dataset" (name as passed to load_dataset), "input_size" ([C, H, W] of one
    normalised input), "mean" and "std" (per channel, of pixel values scaled to [0, 1]),
    "classes" (names, in label order) and "resize" (how images of other sizes were brought to
    input_size: "crop" = shorter side resized then centre-cropped, "stretch", or None when the
    dataset's images all had that size). Set by the trainer, saved in and restored from checkpoints.
    """
    return getattr(model, "effdl_data", None)


def model_input_size(model: nn.Module, default: tuple[int, ...] = DEFAULT_INPUT_SIZE) -> tuple[int, ...]:
    """(C, H, W) of one input of `model`: the recorded training input size, else `default`."""
    meta = data_meta(model)
    size = meta.get("input_size") if meta else None
    return tuple(int(v) for v in size) if size else tuple(default)


def example_input_shape(model: nn.Module, input_size: Sequence[int] | None = None) -> tuple[int, ...]:
    """The shape of one example batch for tracing or exporting `model`: batch 1 at the model's own
    input size (`model_input_size`, any rank) when `input_size` is None; else `input_size` as
    (C, H, W) of one image, or as the full shape with the batch first (N, C, ...), which is how
    inputs that are not images are given (e.g. (1, C, L) for a Conv1d model).

    Raises EffdlError for fewer than two dimensions or a size below 1. (`effdl.measure.profile`
    takes only the full batch-1 shape: there a 3-value size is ambiguous and refused.)
    """
    if input_size is None:
        size = (1, *(int(d) for d in model_input_size(model)))
    else:
        size = tuple(int(d) for d in input_size)
        size = (1, *size) if len(size) == 3 else size
    if len(size) < 2 or min(size) < 1:
        raise EffdlError(f"input size must be C,H,W (or the full shape N,C,...) of positive integers, got {list(size)}")
    return size
