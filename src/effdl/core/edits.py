"""The record of structural edits on a model, so that a checkpoint rebuilds the edited architecture.

A technique that changes a model's structure (wraps layers with quantizers, removes channels, folds
BatchNorm) registers a replay function and records each edit it makes:

    @register_transform("prune_channels")
    def replay(model, **config): ...          # re-applies the edit to a freshly built model

    record_transform(model, "prune_channels", {"shapes": ...})

Each record is `{"name", "owner", "config"}`: `owner` is the module that registered the replay
(`fn.__module__`). `effdl.checkpoint.load_model` builds the architecture from its spec, then
`replay_transforms` imports the owner of each recorded edit on demand and re-applies it, so loading
an uncompressed checkpoint imports no technique at all. A checkpoint is data, never code: an owner
is imported only if it lies under an allowed package (`ALLOWED_OWNERS`, extended only by code with
`allow_edit_owner`), and only a function registered under the recorded name is called. Records
written before owners existed map through `LEGACY_OWNERS`. Config values must be JSON-serialisable.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from effdl.errors import EffdlError, unknown_name_error

ReplayFn = Callable[..., "nn.Module | None"]

# Packages whose modules a checkpoint may name as the replay of its edits.
ALLOWED_OWNERS: list[str] = ["effdl.compress", "effdl.models", "effdl.core"]

# Checkpoints written before edits named their owner: the module that replays each known name.
LEGACY_OWNERS: dict[str, str] = {
    "quantize": "effdl.compress.quantize.api",
    "half": "effdl.compress.quantize.api",
    "fold_batchnorm": "effdl.compress.quantize.fold",
    "prune_channels": "effdl.compress.prune.structured",
}

_REPLAYS: dict[str, ReplayFn] = {}


def register_transform(name: str) -> Callable[[ReplayFn], ReplayFn]:
    """Register `fn(model, **config) -> model | None` as the replay of edit `name`; its module
    becomes the edit's owner. Raises EffdlError if another module already registered `name`."""

    def wrap(fn: ReplayFn) -> ReplayFn:
        existing = _REPLAYS.get(name)
        if existing is not None and existing.__module__ != fn.__module__:
            raise EffdlError(f"model edit '{name}' is already replayed by {existing.__module__}; "
                             f"{fn.__module__} must use another name")
        _REPLAYS[name] = fn
        return fn

    return wrap


def allow_edit_owner(package: str) -> None:
    """Let checkpoints name modules under `package` (a dotted module path) as the replay of their
    edits: for techniques defined outside effdl. Only code can call this; a checkpoint cannot."""
    if package not in ALLOWED_OWNERS:
        ALLOWED_OWNERS.append(package)


def _allowed(owner: str) -> bool:
    return any(owner == package or owner.startswith(package + ".") for package in ALLOWED_OWNERS)


def record_transform(model: nn.Module, name: str, config: dict[str, Any]) -> None:
    """Append edit `name` with `config` to `model`'s structural history (`model.effdl_transforms`).
    `name` must be registered (by the module that records it), so the record names its owner."""
    if name not in _REPLAYS:
        raise unknown_name_error("model edit (register its replay first)", name, _REPLAYS)
    history = list(getattr(model, "effdl_transforms", []))
    history.append({"name": name, "owner": _REPLAYS[name].__module__, "config": config})
    model.effdl_transforms = history


def model_transforms(model: nn.Module) -> list[dict[str, Any]]:
    """The edits recorded on `model`, oldest first (a copy)."""
    return list(getattr(model, "effdl_transforms", []))


def _replay_of(step: Any) -> tuple[dict[str, Any], ReplayFn]:
    """The normalised record (owner filled in) and the replay function of one recorded edit."""
    if not isinstance(step, dict) or not isinstance(step.get("name"), str) or not isinstance(
            step.get("config", {}), dict):
        raise EffdlError(f"malformed model edit record in the checkpoint: {step!r:.200}")
    name = step["name"]
    owner = step.get("owner") or LEGACY_OWNERS.get(name)
    if owner is None:
        raise unknown_name_error("model edit (the checkpoint names no module replaying it)", name, LEGACY_OWNERS)
    if not isinstance(owner, str) or not _allowed(owner):
        raise EffdlError(f"model edit '{name}' names {owner!r} as its replay, outside the modules a checkpoint "
                         f"may import ({', '.join(ALLOWED_OWNERS)}); if you trust it, call "
                         f"effdl.core.edits.allow_edit_owner({owner!r}) first")
    if name not in _REPLAYS:
        try:
            importlib.import_module(owner)
        except ModuleNotFoundError as exc:
            raise EffdlError(f"model edit '{name}' is replayed by {owner}, which cannot be imported ({exc}); "
                             "was the checkpoint written by another effdl version?") from None
    fn = _REPLAYS.get(name)
    if fn is None or fn.__module__ != owner:
        raise EffdlError(f"model edit '{name}': module {owner} provides no replay of that name")
    return {"name": name, "owner": owner, "config": step.get("config", {})}, fn


def replay_transforms(model: nn.Module, history: list[dict[str, Any]]) -> nn.Module:
    """Re-apply a recorded history to a freshly built model (used when loading checkpoints).

    Every record is checked and its owner imported before any edit runs, so a refused record never
    leaves a half-edited model. Raises EffdlError for a malformed record, an owner outside the
    allowed packages, or an owner that provides no replay of the recorded name.
    """
    if not isinstance(history, list):
        raise EffdlError(f"malformed model edit history in the checkpoint: {history!r:.200}")
    steps = [_replay_of(step) for step in history]
    for step, fn in steps:
        result = fn(model, **step["config"])
        model = result if result is not None else model
    model.effdl_transforms = [step for step, _ in steps]
    return model
