"""Structural edits recorded on a model, so a checkpoint can rebuild the edited architecture.

A compression technique that changes a model's structure (wrapping layers with quantizers,
removing channels, factorizing a conv) registers a replay function and records what it did:

    @register_transform("prune_channels")
    def replay(model, **config): ...          # re-applies the edit to a freshly built model

    record_transform(model, "prune_channels", {"shapes": ...})

`effdl.checkpoint.load_model` builds the architecture from its spec, replays every recorded
transform in order, then loads the weights, so edited models reload with their real shapes.
Config values must be JSON-serialisable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from effdl.errors import unknown_name_error

_TRANSFORMS: dict[str, Callable[..., nn.Module | None]] = {}


def register_transform(name: str):
    """Register `fn(model, **config) -> model | None` as the replay of transform `name`."""

    def wrap(fn):
        _TRANSFORMS[name] = fn
        return fn

    return wrap


def record_transform(model: nn.Module, name: str, config: dict[str, Any]) -> None:
    """Append transform `name` with `config` to `model`'s structural history."""
    history = list(getattr(model, "effdl_transforms", []))
    history.append({"name": name, "config": config})
    model.effdl_transforms = history


def model_transforms(model: nn.Module) -> list[dict[str, Any]]:
    return list(getattr(model, "effdl_transforms", []))


def replay_transforms(model: nn.Module, history: list[dict[str, Any]]) -> nn.Module:
    """Re-apply a recorded history to a freshly built model (used when loading checkpoints)."""
    import effdl.compress  # noqa: F401  registers the compression transforms

    for step in history:
        if step["name"] not in _TRANSFORMS:
            raise unknown_name_error("model transform", step["name"], _TRANSFORMS)
        result = _TRANSFORMS[step["name"]](model, **step["config"])
        model = result if result is not None else model
    model.effdl_transforms = list(history)
    return model
