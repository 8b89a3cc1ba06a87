"""The one writer of a compressed run's directory (prune, quantize, and what recipes compose).

    resume.json        written first: how to continue the run and what a resume must match (its
                       kind, the source checkpoint's bytes, the technique options but the device;
                       effdl.train.run.RESUME_RECORD, so `effdl train --resume` refuses the run)
    config.yaml        the fine-tune's resolved TrainConfig (only when the run fine-tunes)
    metrics.jsonl      one line per fine-tuning epoch, written by the trainer
    last.safetensors   the trainer's resumable state during a fine-tune
    best.safetensors   the final model, exactly as evaluated: the compressed (and fine-tuned) model
                       after the LAST epoch; never chosen among epochs on the test split
                       its header's `lineage` is the source's with this run's entry appended
                       (effdl.checkpoint: stage = kind, method, source path, config_hash of the
                       run's options, accuracy)
    summary.json       one schema for every kind: the core fields `effdl report` reads (CORE_FIELDS)
                       and the kind's own measurements under `details`

An existing run is refused unless `overwrite` (effdl.fileio.claim_run_dir); the source checkpoint's
folder is never replaced. An interrupted one (a fine-tune's last.safetensors, no summary.json) can be
continued with `resume`: the pipeline compresses the source again the same way (every technique
here is deterministic for a given checkpoint, options and seed) and the fine-tune continues from
last.safetensors (effdl.pipelines.finetune), epoch, optimizer and data order included.

Under torchrun every process runs the same pipeline (the same deterministic compression of the same
checkpoint, then a data-parallel fine-tune): creating the run joins the process group
(effdl.train.distributed), and only rank 0 claims, creates and writes the directory; the others
wait for its files and return the same summary.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effdl.fileio import atomic_write, claim_run_dir, file_hash
from effdl.train import distributed

if TYPE_CHECKING:
    from torch import nn

    from effdl.measure.accuracy import Accuracy
    from effdl.train import TrainConfig

# The fields every compressed run's summary.json holds at its top level (effdl.report.runs.RunSummary
# reads the first nine); everything else the kind measured is under "details".
CORE_FIELDS = ("name", "kind", "dataset", "model", "accuracy", "correct", "total", "checkpoint", "evaluated_on",
               "source", "source_accuracy", "details")


# Options a resumed fine-tune may change: where it runs does not change what it computes.
RESUME_FREE_OPTIONS = ("device",)


def _json_data(options: Any) -> Any:
    import dataclasses

    data = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(options or {})
    return {k: v for k, v in json.loads(json.dumps(data, default=str)).items() if k not in RESUME_FREE_OPTIONS}


def _differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between a run's recorded start and this call, for a user to read."""
    changes = []
    if recorded.get("kind") != current["kind"]:
        changes.append(f"it is a {recorded.get('kind')} run, not a {current['kind']} run")
    if recorded.get("source_sha256") != current["source_sha256"]:
        changes.append("another source checkpoint (its bytes differ from those the run started from)")
    from effdl.train.run import record_differences

    return changes + record_differences(recorded.get("options") or {}, current["options"] or {})


class CompressedRun:
    """A compressed run's directory, claimed on creation (nothing is written until asked)."""

    def __init__(self, out_dir: str | Path, *, kind: str, source: str | Path, overwrite: bool = False,
                 other_sources: tuple[str | Path, ...] = (), device: str = "auto", options: Any = None,
                 resume: bool = False):
        """Claim `out_dir` for a run of `kind` ("prune", "quantize"...) made from checkpoint `source`
        with technique `options` (a dataclass, recorded in resume.json). Under torchrun, join
        the process group first (`device`: the run's device option) and claim on rank 0 alone.

        `resume`: continue the interrupted run in `out_dir` instead (`resume_from` is then its
        last.safetensors). Raises EffdlError if `out_dir` holds a run (unless `overwrite`, which
        deletes it first) or holds `source` or one of `other_sources` (e.g. a lottery rewind
        checkpoint); with `resume`, if it holds no interrupted run of the same kind, source and options.
        """
        distributed.init_from_env(device)
        self.kind = kind
        self.source = str(source)
        self.writes = distributed.is_main()  # the one process that writes the directory
        self.record = {"kind": kind, "source_sha256": file_hash(source) if Path(source).is_file() else None,
                       "options": _json_data(options)}
        self.resume_from: Path | None = None
        self.path = Path(out_dir)
        if resume:
            self.resume_from = distributed.on_main_then_share(self._check_resumable)
        else:
            interrupted = (self.path / "last.safetensors").is_file() and not (self.path / "summary.json").is_file()
            hint = ("it holds an interrupted run: continue it with --resume (the same options), or pick another --out"
                    if interrupted else "pick another --out")
            distributed.on_main_then_share(lambda: claim_run_dir(
                out_dir, overwrite=overwrite, hint=hint, sources=tuple(s for s in (source, *other_sources) if s)))
        from effdl.checkpoint import read_checkpoint_meta, source_lineage

        # read now, as the source was when the run began (a clear EffdlError if it is not a checkpoint)
        self.source_lineage = source_lineage(read_checkpoint_meta(source), source)

    def _check_resumable(self) -> Path:
        from effdl.train.run import check_resumable

        return check_resumable(self.path, self.record, _differences, same="source checkpoint and options")

    @property
    def name(self) -> str:
        return self.path.name

    def create(self) -> Path:
        """Create the folder (after the checks that may refuse the job, so nothing is left behind)
        with its resume record."""
        from effdl.train.run import RESUME_RECORD, write_resume_record

        if self.writes and not (self.path / RESUME_RECORD).is_file():
            self.path.mkdir(parents=True, exist_ok=True)
            write_resume_record(self.path, f"effdl {self.kind} {self.source} ... --resume --out {self.path} (the "
                                "options it was started with)", self.record)
        return self.path

    def write_file(self, name: str, write: Callable[[Path], Any]) -> Path:
        """Write `name` in the run's folder by calling `write(path)` (a plot's savefig, say), on the
        writing process only; returns the path."""
        path = self.create() / name
        if self.writes:
            write(path)
        return path

    def write_config(self, config: TrainConfig) -> Path:
        """config.yaml: the fine-tune's resolved configuration (what `effdl train` writes for a run)."""
        from effdl.train.config import save_config

        return self.write_file("config.yaml", lambda path: save_config(config, path))

    def finish(
        self, model: nn.Module, accuracy: Accuracy, *, dataset: str, test_limit: int | None,
        source_accuracy: float | None, details: dict[str, Any], checkpoint_config: dict[str, Any] | None = None,
        checkpoint_meta: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write best.safetensors (`model`, whose test accuracy is `accuracy`) and summary.json; return
        the summary. `details`: the kind's own measurements (JSON-serialisable); `checkpoint_meta` is
        stored in the checkpoint's header under the kind's name; `checkpoint_config` as its config.
        The lineage entry takes `details["method"]` and hashes `details["options"]` (the run's config)."""
        from effdl.checkpoint import lineage_entry, save_model
        from effdl.measure.accuracy import evaluated_on
        from effdl.models import model_spec

        summary = {
            "name": self.name, "kind": self.kind, "dataset": dataset, "model": model_spec(model),
            "accuracy": accuracy.top1, "correct": accuracy.correct, "total": accuracy.total,
            "checkpoint": "best.safetensors", "evaluated_on": evaluated_on(test_limit, accuracy.total),
            "source": self.source, "source_accuracy": source_accuracy, "details": details,
        }
        if not self.writes:
            distributed.barrier()  # returns once rank 0's files are written
            return summary
        self.create()
        entry = lineage_entry(self.kind, config=details.get("options"), run=self.name, source=self.source,
                              method=details.get("method"), accuracy=accuracy.top1)
        save_model(self.path / "best.safetensors", model.cpu(), config={**(checkpoint_config or {}), "dataset": dataset},
                   metrics={"accuracy": accuracy.top1, "correct": accuracy.correct, "total": accuracy.total},
                   extra_meta={"lineage": [*self.source_lineage, entry],
                               **({self.kind: checkpoint_meta} if checkpoint_meta is not None else {})})
        text = json.dumps(summary, indent=2) + "\n"
        atomic_write(self.path / "summary.json", lambda tmp: Path(tmp).write_text(text))
        distributed.barrier()
        return summary
