"""Atomic file writes (a reader never sees a half-written checkpoint, ONNX file or cache entry),
run directories' one claiming rule, and the content hash that says whether a file is the same one."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes (16 hex digits): the same file however its path is spelled, and
    another one once it is rewritten (a retrained checkpoint at the same path)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def check_output_file(path: str | Path) -> Path:
    """`path` as a Path, when a file may be written there; EffdlError when it is a folder or lies
    under a file (checked before any work whose result would go there)."""
    from effdl.errors import EffdlError

    path = Path(path)
    if path.is_dir():
        raise EffdlError(f"{path} is a folder: give the path of a file to write, in it or elsewhere")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise EffdlError(f"cannot write {path}: {blocking} is a file, not a folder")
    return path


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call `write(tmp)` to fill a temporary file beside `path`, flush it to disk, then rename it.

    On any failure the temporary file is removed and an existing `path` is left untouched. Raises
    EffdlError when `path` is a folder or lies under a file.
    """
    path = check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def missing_checkpoint(path: str | Path, what: str = "checkpoint") -> str:
    """Why `path` (not a file) gives no checkpoint, in one line: a run folder names its checkpoint."""
    path = Path(path)
    if path.is_dir():
        inside = [name for name in ("best.safetensors", "last.safetensors") if (path / name).is_file()]
        hint = f"give {path / inside[0]}" if inside else "give the .safetensors file itself"
        return f"{what} {path} is a folder, not a file: {hint}"
    return f"{what} not found: {path}"


# What marks a folder as a run directory: any file that train, prune or quantize writes there.
RUN_FILES = ("summary.json", "best.safetensors", "last.safetensors", "metrics.jsonl", "config.yaml",
             "sensitivity.json")


def run_files_in(path: str | Path) -> list[str]:
    """The RUN_FILES present in folder `path` (none when it is missing or not a folder)."""
    path = Path(path)
    return [name for name in RUN_FILES if (path / name).exists()] if path.is_dir() else []


def claim_run_dir(
    path: str | Path, *, overwrite: bool = False, hint: str = "pick another --out", sources: tuple = (),
    check_only: bool = False,
) -> Path:
    """Make sure a new run may be written to `path`; the one rule of train, prune and quantize.

    A folder that holds a run (any of RUN_FILES) is refused with an EffdlError naming `hint`, unless
    `overwrite`, in which case the whole old run folder is deleted first (so no stale metrics or
    checkpoints mix with the new run). A missing or run-free folder is fine and left as it is (a
    folder without run files is never deleted). A folder holding one of `sources` (the input
    checkpoint) is never replaced. Returns `path` as a Path; creates nothing. `check_only`: refuse as
    above but delete nothing (a command checking before its slow work, claiming the folder later).
    """
    import shutil

    from effdl.errors import EffdlError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EffdlError(f"{path} is a file, not a run directory")
    found = run_files_in(path)
    if found:
        inside = [str(s) for s in sources if path.resolve() in Path(s).resolve().parents]
        if inside:
            raise EffdlError(f"{path} holds the input {inside[0]}; write the new run to another --out")
        if not overwrite:
            raise EffdlError(f"{path} already holds a run ({', '.join(found)}); {hint}, or pass --overwrite to replace it")
        if not check_only:
            shutil.rmtree(path)
    return path
