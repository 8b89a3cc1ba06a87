"""On-disk cache of decoded datasets: named .npy arrays plus a JSON manifest, written atomically.

A cache entry is a folder. Its manifest records a fingerprint of the source files; an entry whose
fingerprint differs from the source's current one is stale and is rewritten. Arrays are written
first and the manifest last (each via a temporary file and `os.replace`), so a reader never sees a
manifest that describes half-written arrays.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from effdl.fileio import atomic_write

MANIFEST = "manifest.json"


def cache_root() -> Path:
    """Where effdl caches derived files: $EFFDL_CACHE, else ~/.cache/effdl."""
    return Path(os.environ.get("EFFDL_CACHE") or Path.home() / ".cache" / "effdl").expanduser()


def load_arrays(
    entry: Path, fingerprint: str, *, mmap: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The arrays and metadata cached in `entry`, or None if absent, stale or unreadable.

    With `mmap`, arrays are read-only memory maps: indexing some rows reads only those from disk.
    """
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        if manifest.get("fingerprint") != fingerprint:
            return None
        mode = "r" if mmap else None
        arrays = {name: np.load(entry / f"{name}.npy", allow_pickle=False, mmap_mode=mode) for name in manifest["arrays"]}
    except (OSError, ValueError, KeyError):
        return None
    if any(list(arrays[name].shape) != shape for name, shape in manifest["arrays"].items()):
        return None
    return arrays, manifest["meta"]


def save_arrays(entry: Path, fingerprint: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Cache `arrays` and JSON-able `meta` in `entry`; a failure only warns (the cache is optional)."""
    manifest = {"fingerprint": fingerprint, "arrays": {k: list(v.shape) for k, v in arrays.items()}, "meta": meta}
    try:
        entry.mkdir(parents=True, exist_ok=True)
        (entry / MANIFEST).unlink(missing_ok=True)  # the entry is invalid until the new manifest lands
        for name, array in arrays.items():
            atomic_write(entry / f"{name}.npy", lambda tmp, a=array: _save_npy(tmp, a))
        atomic_write(entry / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest)))
    except OSError as exc:
        warnings.warn(f"could not write the dataset cache {entry}: {exc}", stacklevel=2)


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a bare path
        np.save(f, array, allow_pickle=False)
