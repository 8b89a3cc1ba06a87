"""The job behind `effdl score`: per-layer complexity of a checkpoint (or model name) and its scores
under spec/scoring.md (micronet, imt2021, imt2024), optionally with the accuracy measured on the
full test split and whether the entry reaches each track's threshold.

`score_checkpoint(source, ScoreOptions(...))` returns what `effdl score --json` prints. Every count
is read from the model (the counting engine of effdl.measure); the accuracy, when asked, from its
own dataset (or the options' data). torch is imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effdl.console import say
from effdl.errors import EffdlError, unknown_name_error
from effdl.pipelines.sources import DataOptions, check_input_size, load_source

if TYPE_CHECKING:
    import torch
    from torch import nn

    from effdl.measure import Accuracy, ModelProfile, ScoreResult


@dataclass(kw_only=True)
class ScoreOptions(DataOptions):
    """What `effdl score` does; see `effdl score --help` for each option."""

    scorer: str = "all"  # micronet, imt2021, imt2024 or all
    track: str | None = None  # None: the dataset's track, else the scorer's first
    input_size: list[int] | None = None  # C,H,W (C,L or C,D,H,W for 1-D / 3-D models); None: the model's own
    half: bool = False  # cast the model to float16 before measuring
    freebie: bool = True  # micronet: count unquantized entries at 16 bits
    evaluate: bool = False  # measure accuracy on the full test split (or test_limit) and check the thresholds
    tta: bool = False  # with evaluate: average with horizontally flipped images
    device: str = "auto"

    def validate(self) -> None:
        """EffdlError (one line) for a value that cannot work; scorer and track names are checked
        against the scorers' tables when scoring (that needs torch)."""
        self.validate_data()
        check_input_size(self.input_size, length=None)
        if not isinstance(self.scorer, str) or not self.scorer:
            raise EffdlError(f"scorer must be a name (micronet, imt2021, imt2024 or all), got {self.scorer!r}")


@dataclass
class ScoreReport:
    """What `score_model` measured: the profile, each scorer's result, and the accuracy if asked."""

    name: str
    profile: ModelProfile
    results: list[ScoreResult]
    accuracy: Accuracy | None = None
    dataset: str | None = None
    notes: list[str] = field(default_factory=list)
    evaluated_on: str | None = None  # with the accuracy: "test" or "test (balanced subset of N)"
    tta: bool = False  # with the accuracy: averaged with the flipped images

    @property
    def accuracy_where(self) -> str:
        """Where the accuracy was measured, in words: "test split", "test (balanced subset of 256), flip TTA"."""
        where = "test split" if self.evaluated_on in (None, "test") else self.evaluated_on
        return where + (", flip TTA" if self.tta else "")

    def to_dict(self) -> dict[str, Any]:
        """The dict `effdl score --json` prints."""
        from effdl.models.catalog import PARAMETERS_COUNTED

        out: dict[str, Any] = {"model": self.name, "profile": self.profile.to_dict(),
                               "parameters_counted": PARAMETERS_COUNTED, "notes": list(self.notes), "scores": []}
        for result in self.results:
            entry = result.to_dict()
            if self.accuracy is not None:
                entry["qualifies"] = result.qualifies(self.accuracy.correct, self.accuracy.total)
            out["scores"].append(entry)
        if self.accuracy is not None:
            out["accuracy"] = {"top1": self.accuracy.top1, "correct": self.accuracy.correct,
                               "total": self.accuracy.total, "loss": self.accuracy.loss, "dataset": self.dataset,
                               "evaluated_on": self.evaluated_on, "tta": self.tta}
        return out


def chosen_tracks(scorer: str, track: str | None, dataset: str | None) -> list[tuple[str, str]]:
    """(scorer, track) pairs to compute: `scorer` or all of them, on `track` where it exists, else
    on `dataset`'s track, else the scorer's first. EffdlError for an unknown scorer or track."""
    from effdl.measure.scoring import TRACKS

    if scorer != "all" and scorer not in TRACKS:
        raise unknown_name_error("scorer", scorer, [*TRACKS, "all"])
    scorers = list(TRACKS) if scorer == "all" else [scorer]
    if track is not None and not any(track in TRACKS[s] for s in scorers):
        known = sorted({t for s in scorers for t in TRACKS[s]})
        raise unknown_name_error(f"track of {scorer}", track, known)
    pairs = []
    for name in scorers:
        tracks = TRACKS[name]
        if track is not None and (scorer != "all" or track in tracks):
            pairs.append((name, track))
        else:
            pairs.append((name, dataset if dataset in tracks else next(iter(tracks))))
    return pairs


def _cast_inputs(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`model` fed the float32 batches the loaders produce, cast to its (half-precision) `dtype`."""
    from torch import nn

    class _CastInputs(nn.Module):
        def __init__(self, model: nn.Module, dtype: torch.dtype):
            super().__init__()
            self.model, self.dtype = model, dtype

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x.to(self.dtype))

    return _CastInputs(model, dtype)


def score_model(model: nn.Module, meta: dict[str, Any], options: ScoreOptions, *, name: str = "model") -> ScoreReport:
    """Score an already loaded `model` (checkpoint metadata `meta`, {} for none) as
    `score_checkpoint` does; `name` labels the report."""
    import torch

    from effdl.data import BatchLoader
    from effdl.device import resolve_device
    from effdl.measure import evaluate, profile, score
    from effdl.models.registry import data_meta, model_input_size

    options.validate()
    config = meta.get("config") or {}
    record = data_meta(model) or {}
    dataset_name = options.data or record.get("dataset") or config.get("dataset")
    pairs = chosen_tracks(options.scorer, options.track, dataset_name)
    notes = []
    shape = model_input_size(model)  # the size the model was trained at
    if options.input_size is not None:
        override = tuple(options.input_size)
        if record.get("input_size") and override != shape:
            notes.append(f"note: measured at --input-size {'x'.join(map(str, override))}; the model was trained "
                         f"at {'x'.join(map(str, shape))}" + (" (its accuracy is measured at that size)"
                                                              if options.evaluate else ""))
        shape = override
    if options.half:
        model = model.half()
    prof = profile(model, (1, *shape))
    results = [score(prof, s, t, freebie=options.freebie) for s, t in pairs]
    accuracy, data_name = None, None
    if options.evaluate:
        from effdl.measure.accuracy import check_model_fits_data, evaluated_on

        data = options.dataset(meta, model)  # the model's recorded data unless the options say otherwise
        check_model_fits_data(model, data)  # before any work, with the same words as every other command
        data_name = data.name
        if tuple(data.image_shape) != tuple(model_input_size(model)):
            notes.append(f"note: accuracy measured on {'x'.join(map(str, data.image_shape))} images; the model "
                         f"was trained at {'x'.join(map(str, model_input_size(model)))}")
        device = resolve_device(options.device)
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        evaluated = _cast_inputs(model, dtype).to(device)
        loader = BatchLoader.for_split(data, "test", batch_size=512, device=device)
        say(f"evaluating on {len(loader.labels):,} test images...")
        accuracy = evaluate(evaluated, loader, tta=options.tta)
    where = evaluated_on(options.test_limit, accuracy.total) if accuracy is not None else None
    return ScoreReport(name, prof, results, accuracy, data_name, notes, where, bool(options.tta and accuracy))


def score_checkpoint(source: str | Path, options: ScoreOptions, *, num_classes: int = 10) -> dict[str, Any]:
    """Count and score checkpoint or registered model name `source` (module docstring).

    Returns {"model", "profile": per-layer records and totals (params, MACs, size_bytes...),
    "parameters_counted", "notes", "scores": [{scorer, track, params, ops, score, threshold...,
    "qualifies" with evaluate}], "accuracy": {top1, correct, total, loss, dataset} with evaluate}.
    `num_classes` sizes a model built from a name. Raises EffdlError for bad options, unknown
    scorers or tracks, a missing checkpoint or dataset, or data of other classes.
    """
    options.validate()
    model, meta = load_source(source, num_classes)
    return score_model(model, meta, options, name=str(source)).to_dict()
