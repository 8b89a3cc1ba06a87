"""Run directories written by train, prune and quantize: find them, validate their summary, locate weights.

Every kind of run writes a summary.json with the same core fields (`RunSummary`): name, kind
(train / prune / quantize), dataset, model, accuracy with its correct/total counts, checkpoint and
evaluated_on (where the accuracy was measured). Summaries written before the core fields were
agreed are read too: a missing name is the directory's, a missing model is read from the
checkpoint's architecture spec, a missing kind is guessed from the keys that kind writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from effdl.console import say
from effdl.errors import EffdlError

SUMMARY_FILE = "summary.json"
REPLACED_MARK = ".replaced-"  # a recipe stage set aside when its options changed: `NN-kind.replaced-<hash>`


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


RUN_KINDS = ("train", "prune", "quantize")


class RunSummary(BaseModel):
    """The part of a run's summary.json a report relies on (other keys are kept, unused)."""

    model_config = ConfigDict(extra="allow")
    name: str
    kind: Literal["train", "distill", "prune", "factorize", "quantize"] = "train"
    accuracy: float = Field(ge=0, le=1)
    correct: int = Field(ge=0)
    total: int = Field(gt=0)
    dataset: str
    model: ModelRef
    time_s: float | None = None
    images_per_s: float | None = None
    checkpoint: str = "best.safetensors"
    evaluated_on: str = "test"  # the split the accuracy was measured on ("test", or a subset of it)
    selected_on: str | None = None  # train: "val" (best epoch on validation) or "last_epoch"
    tta: bool = False  # the accuracy averages each image with its mirror (not comparable with plain ones)

    @model_validator(mode="after")
    def _counts_match_accuracy(self) -> RunSummary:
        # Thresholds are checked on correct/total, so the reported accuracy must be that fraction.
        if self.correct > self.total or abs(self.accuracy - self.correct / self.total) > 1e-9:
            raise ValueError(f"accuracy {self.accuracy} is not correct/total = {self.correct}/{self.total}")
        return self


@dataclass(frozen=True)
class Run:
    path: Path
    summary: RunSummary

    @property
    def checkpoint(self) -> Path:
        """The weights the summary's accuracy was measured on (best, else last)."""
        for name in (self.summary.checkpoint, "best.safetensors", "last.safetensors"):
            if (self.path / name).is_file():
                return self.path / name
        raise EffdlError(f"run {self.path} has no checkpoint (best.safetensors or last.safetensors)")


def load_run(path: str | Path) -> Run:
    """Read and validate the run directory `path`; an EffdlError says what is missing or wrong."""
    path = Path(path)
    if not path.is_dir():
        raise EffdlError(f"run directory not found: {path}")
    summary_path = path / SUMMARY_FILE
    if not summary_path.is_file():
        raise EffdlError(f"{path} is not a finished run: no {SUMMARY_FILE}")
    try:
        values = json.loads(summary_path.read_text())
        if isinstance(values, dict):
            values = _fill_older_summary(path, values)
        summary = RunSummary.model_validate(values)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EffdlError(f"{summary_path} is not valid JSON: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'summary'}: {e['msg']}" for e in exc.errors())
        raise EffdlError(f"{summary_path} is not a run summary: {problems}") from None
    return Run(path, summary)


def _fill_older_summary(path: Path, values: dict[str, Any]) -> dict[str, Any]:
    """Core fields that summaries written before they were agreed lack, from what the run holds."""
    values = dict(values)
    values.setdefault("name", path.name)
    if "kind" not in values:
        measured = {**values, **(values.get("details") or {})}  # kind-specific fields live under "details"
        values["kind"] = "quantize" if "layer_bits" in measured else "prune" if "sparsity_before" in measured else "train"
    if "model" not in values:
        from effdl.checkpoint import read_checkpoint_meta

        checkpoint = path / values.get("checkpoint", "best.safetensors")
        if checkpoint.is_file():
            spec = read_checkpoint_meta(checkpoint).get("spec")
            if spec:
                values["model"] = spec
    return values


def find_runs(paths: list[str | Path]) -> list[Run]:
    """Runs named by `paths`: run directories, or folders whose subfolders are runs (e.g. runs/)."""
    runs: list[Run] = []
    unfinished: list[Path] = []
    set_aside: list[Path] = []
    for given in map(Path, paths):
        if len(paths) > 1 and REPLACED_MARK in given.name:  # `effdl report out/recipe/*`
            set_aside.append(given)
            continue
        children = sorted(p.parent for p in given.glob(f"*/{SUMMARY_FILE}")) if given.is_dir() else []
        # a recipe's folder: the stages a re-run set aside are not its runs (named alone, one is)
        replaced = [child for child in children if REPLACED_MARK in child.name]
        set_aside += replaced
        children = [child for child in children if REPLACED_MARK not in child.name]
        if replaced and not children and not (given / SUMMARY_FILE).exists():
            continue
        if given.is_dir() and not (given / SUMMARY_FILE).exists() and children:
            runs.extend(load_run(child) for child in children)
        elif len(paths) > 1 and given.is_dir() and not (given / SUMMARY_FILE).exists():
            unfinished.append(given)  # `effdl report runs/*` with a run in progress or interrupted
        else:
            runs.append(load_run(given))
    if unfinished:
        if not runs:
            load_run(unfinished[0])  # its error: nothing to report
        say(f"skipped {len(unfinished)} unfinished run(s) (no {SUMMARY_FILE}): {', '.join(map(str, unfinished))}")
    if set_aside and not runs:
        raise EffdlError(f"only recipe stages a re-run replaced (*{REPLACED_MARK}*) were found, e.g. {set_aside[0]}: "
                         "name one alone to report it")
    if set_aside:
        say(f"left out {len(set_aside)} replaced recipe stage(s) (*{REPLACED_MARK}*; name one alone to report it)")
    if not runs:
        raise EffdlError("no runs given")
    return runs
