"""Checkpoints: weights, architecture spec and config in one safetensors file, written atomically.

A checkpoint never contains pickled code: tensors are stored with safetensors and everything else
(architecture spec, structural transforms, run config, metrics, optimizer hyper-parameters) as JSON
in the file's header. Files are written to a temporary name and renamed, so an interrupted write
never leaves a half-written checkpoint in place.

Tensor keys are namespaced: `model/...` (weights), `ema/...` (EMA weights), `optim/...`
(optimizer state), `extra/...` (anything else a trainer needs to resume, e.g. RNG state).

Lineage: the header's `lineage` is the chain of stages that made the model, oldest first, so a
compressed checkpoint says which training run and which compressions it came from. Each entry is a
small JSON object; every entry has `stage` and, but "unknown", `date` (ISO 8601, UTC, when the
checkpoint was written) and `config_hash` (`config_hash`: first 12 hex digits of the sha256 of
the stage's configuration as sorted JSON, to tell two runs' settings apart, not to rebuild them):

    {"stage": "train", "run": run dir name, "dataset", "model": spec name, "epochs": epochs
     trained into these weights, "accuracy": top-1 on the test split (null until measured), ...}
    {"stage": "prune" | "quantize", "run", "source": path of the source checkpoint, "method",
     "accuracy": top-1 on the test split (or the subset the run's summary names), ...}
    {"stage": "unknown", "source": path}   a source written before lineage existed

A compressed run copies its source's lineage (`source_lineage`) and appends its own entry.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from effdl.errors import EffdlError
from effdl.fileio import atomic_write, missing_checkpoint
from effdl.models.registry import DEFAULT_INPUT_SIZE, create_model, data_meta, model_spec
from effdl.core.edits import model_transforms, replay_transforms

FORMAT_VERSION = 1
_META_KEY = "effdl"


def _plain(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; checkpoints are small enough to copy.
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


def write_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Atomically write `tensors` and JSON `meta` to `path` (a .safetensors file)."""
    header = {_META_KEY: json.dumps({"format_version": FORMAT_VERSION, **meta})}
    plain = _plain(tensors)
    return atomic_write(path, lambda tmp: save_file(plain, tmp, metadata=header))


def _unreadable(path: Path, exc: Exception) -> EffdlError:
    """Why `path` could not be read as a checkpoint: another format, another tool's file, or damage."""
    if isinstance(exc, KeyError):  # a valid safetensors file: only effdl's header entry is missing
        return EffdlError(f"{path} is a safetensors file without effdl's metadata (written by another tool?): it "
                          "does not say which architecture its weights belong to")
    try:
        with open(path, "rb") as f:
            start = f.read(4)
    except OSError:
        start = b""
    bare_pickle = len(start) >= 2 and start[0] == 0x80 and 2 <= start[1] <= 5  # PROTO opcode, protocol 2-5
    if start == b"PK\x03\x04" or bare_pickle:  # torch.save's zip archive, or its older pickle format
        return EffdlError(f"{path} is a PyTorch pickle (torch.save), not a checkpoint: effdl reads safetensors only, "
                          "which hold no code; load it yourself and save it with effdl.checkpoint.save_model")
    return EffdlError(f"{path} is not a readable effdl checkpoint (corrupt or truncated?): {exc}")


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint's tensors and metadata; a clear EffdlError if missing, corrupt or not effdl's."""
    path = Path(path)
    if not path.is_file():
        raise EffdlError(missing_checkpoint(path))
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
        meta = json.loads(header[_META_KEY])
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as exc:
        raise _unreadable(path, exc) from None
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise EffdlError(f"{path} was written by a newer effdl (format {meta['format_version']})")
    return tensors, meta


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """A checkpoint's metadata alone (its JSON header), without reading the tensors."""
    path = Path(path)
    if not path.is_file():
        raise EffdlError(missing_checkpoint(path))
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})[_META_KEY])
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as exc:
        raise _unreadable(path, exc) from None


def config_hash(config: dict[str, Any] | None) -> str:
    """A short fingerprint of a JSON-able configuration: 12 hex digits of sha256 over sorted JSON."""
    text = json.dumps(config or {}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def lineage_entry(stage: str, *, config: dict[str, Any] | None, **fields: Any) -> dict[str, Any]:
    """One lineage entry (see the module docstring): `stage`, `fields`, `config_hash` of `config`, the date now."""
    return {"stage": stage, **fields, "config_hash": config_hash(config),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def source_lineage(meta: dict[str, Any], source: str | Path) -> list[dict[str, Any]]:
    """The lineage a checkpoint made from `source` (whose metadata is `meta`) starts with: a copy of
    the source's, or one "unknown" entry naming `source` when it predates lineage."""
    lineage = meta.get("lineage")
    if not lineage:
        return [{"stage": "unknown", "source": str(source)}]
    return [dict(entry) for entry in lineage]


def update_checkpoint_meta(path: str | Path, **fields: Any) -> Path:
    """Rewrite `path` (atomically) with `fields` replacing those of its metadata; tensors unchanged."""
    tensors, meta = read_checkpoint(path)
    meta.pop("format_version", None)
    return write_checkpoint(path, tensors, {**meta, **fields})


def split_namespace(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under `prefix/`, with the prefix removed."""
    p = prefix + "/"
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def with_namespace(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{k}": v for k, v in tensors.items()}


_EFFDL_ATTRS = ("effdl_spec", "effdl_transforms", "effdl_data")


def _wrapped(model: nn.Module) -> nn.Module | None:
    """The module `model` wraps, if it is a wrapper whose state_dict prefixes the wrapped one's keys:
    torch.compile (`_orig_mod.`), DataParallel / DistributedDataParallel and AveragedModel (`module.`)."""
    from torch.optim.swa_utils import AveragedModel

    compiled = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule, without importing dynamo
    if isinstance(compiled, nn.Module):
        return compiled
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel, AveragedModel)):
        return model.module
    return None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside any nesting of compile / DataParallel / DDP / AveragedModel wrappers.

    Checkpoints always hold the bare model's keys (no `_orig_mod.` or `module.` prefixes), so they
    load into a freshly built architecture. The effdl attributes (spec, transforms, data) are taken
    from the innermost module that has them, else from the outermost wrapper that does, and set on
    the returned model.
    """
    chain = [model]
    while (inner := _wrapped(chain[-1])) is not None:
        chain.append(inner)
    bare = chain[-1]
    for attr in _EFFDL_ATTRS:
        holder = next((m for m in reversed(chain) if getattr(m, attr, None) is not None), None)
        if holder is not None and holder is not bare:
            setattr(bare, attr, getattr(holder, attr))
    return bare


def model_meta(model: nn.Module) -> dict[str, Any]:
    """The architecture part of a checkpoint's metadata: spec, structural transforms and, when the
    model records it, the data it was trained for (`effdl.models.registry.data_meta`)."""
    spec = model_spec(model)
    if spec is None:
        raise EffdlError(
            "this model was not built by effdl.create_model, so a checkpoint could not rebuild it; "
            "build it with create_model (or register its factory with register_model)"
        )
    meta = {"spec": spec, "transforms": model_transforms(model)}
    if data_meta(model) is not None:
        meta["data"] = data_meta(model)
    return meta


def save_model(
    path: str | Path,
    model: nn.Module,
    *,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    """Save `model` (built by create_model, possibly transformed) with its config and metrics.

    A wrapped model (torch.compile, DataParallel, DistributedDataParallel, AveragedModel) is saved
    as the bare model it wraps (`unwrap_model`), so `load_model` rebuilds it without the wrapper.
    """
    model = unwrap_model(model)
    tensors = with_namespace(model.state_dict(), "model")
    tensors.update(extra_tensors or {})
    meta = {**model_meta(model), "config": config or {}, "metrics": metrics or {}, **(extra_meta or {})}
    return write_checkpoint(path, tensors, meta)


def build_model(meta: dict[str, Any]) -> nn.Module:
    """Rebuild the (untrained) architecture a checkpoint describes."""
    spec = meta.get("spec")
    if not spec:
        raise EffdlError("checkpoint has no architecture spec")
    model = create_model(spec["name"], **spec.get("kwargs", {}))
    model = replay_transforms(model, meta.get("transforms", []))
    data = checkpoint_data_meta(meta)
    if data is not None:
        model.effdl_data = data
    return model


def checkpoint_data_meta(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The data a checkpoint's model was trained for (see `effdl.models.registry.data_meta`).

    Checkpoints written before the data record existed get it from their run config when the
    dataset's shape is known without reading it (CIFAR-10/100: 3x32x32 and the published
    normalisation of `effdl.data.datasets.CIFAR`); otherwise None.
    """
    if meta.get("data"):
        return dict(meta["data"])
    dataset = (meta.get("config") or {}).get("dataset")
    if dataset not in ("cifar10", "cifar100"):
        return None
    from effdl.data.datasets import CIFAR  # only for such old checkpoints: it imports torchvision

    spec = CIFAR[dataset]
    return {"dataset": dataset, "input_size": list(DEFAULT_INPUT_SIZE), "mean": list(spec.mean),
            "std": list(spec.std), "classes": None, "resize": None}


def load_model(path: str | Path, *, namespace: str = "model") -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint as (model, metadata). `namespace="ema"` loads the EMA weights instead."""
    tensors, meta = read_checkpoint(path)
    try:
        model = build_model(meta)
    except EffdlError as exc:  # an architecture or edit this effdl cannot build: say whose
        raise EffdlError(f"{path}: {exc}") from None
    state = split_namespace(tensors, namespace)
    if not state:
        raise EffdlError(f"{path} holds no '{namespace}' weights")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise EffdlError(f"{path}: weights do not fit the architecture: {' '.join(first[:2])}") from None
    return model.eval(), meta


def optimizer_to_checkpoint(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state into tensors and JSON-able metadata."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim/{pid}/{key}"] = value
            else:
                scalars[f"{pid}/{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_checkpoint(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Restore an optimizer saved with `optimizer_to_checkpoint`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in split_namespace(tensors, "optim").items():
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
