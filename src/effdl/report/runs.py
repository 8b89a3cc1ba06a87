"""Run directories written by the trainer: find them, validate their summary, locate their weights."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from effdl.errors import EffdlError

SUMMARY_FILE = "summary.json"


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


class RunSummary(BaseModel):
    """The part of a trainer's summary.json a report relies on (other keys are kept, unused)."""

    model_config = ConfigDict(extra="allow")
    name: str
    accuracy: float = Field(ge=0, le=1)
    correct: int = Field(ge=0)
    total: int = Field(gt=0)
    dataset: str
    model: ModelRef
    time_s: float | None = None
    images_per_s: float | None = None
    checkpoint: str = "best.safetensors"

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
        summary = RunSummary.model_validate(json.loads(summary_path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EffdlError(f"{summary_path} is not valid JSON: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'summary'}: {e['msg']}" for e in exc.errors())
        raise EffdlError(f"{summary_path} is not a run summary: {problems}") from None
    return Run(path, summary)


def find_runs(paths: list[str | Path]) -> list[Run]:
    """Runs named by `paths`: run directories, or folders whose subfolders are runs (e.g. runs/)."""
    runs: list[Run] = []
    for given in map(Path, paths):
        children = sorted(p.parent for p in given.glob(f"*/{SUMMARY_FILE}")) if given.is_dir() else []
        if given.is_dir() and not (given / SUMMARY_FILE).exists() and children:
            runs.extend(load_run(child) for child in children)
        else:
            runs.append(load_run(given))
    if not runs:
        raise EffdlError("no runs given")
    return runs
