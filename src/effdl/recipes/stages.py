"""The stage kinds a recipe may chain, each the library job of one effdl command.

A stage kind names its config class (the one its Python function and its CLI command take: a
stage's keys are exactly that class's fields), whether it needs an input checkpoint, whether it
writes one, what it refuses to take (a quantized model for pruning...), and the function that runs
it. Adding a kind is one `StageKind` registered here; the runner and the plan have no table of kinds.

    kind       config class                               function
    train      effdl.train.TrainConfig                    effdl.train.run.train
    distill    effdl.pipelines.distill.DistillConfig      effdl.pipelines.distill.distill
    prune      effdl.pipelines.prune.PruneOptions         effdl.pipelines.prune.prune_checkpoint
    factorize  effdl.pipelines.factorize.FactorizeOptions effdl.pipelines.factorize.factorize_checkpoint
    quantize   effdl.pipelines.quantize.QuantizeOptions   effdl.pipelines.quantize.quantize_run
    export     effdl.pipelines.export.ExportOptions       effdl.pipelines.export.export_checkpoint
    bench      effdl.pipelines.bench.BenchOptions         effdl.pipelines.bench.bench_checkpoint
    score      effdl.pipelines.score.ScoreOptions         effdl.pipelines.score.score_checkpoint

Config classes are imported only when a recipe uses their kind, so a recipe that never factorizes
never imports factorization.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from effdl.core.registry import Registry
from effdl.errors import EffdlError


@dataclass(frozen=True)
class ModelState:
    """What the plan knows about the model a stage receives, before anything runs."""

    exists: bool = False  # False: no checkpoint yet (the recipe must start by training)
    quantized: str | None = None  # how it was quantized ("qat 4-bit", "ptq-int8"...), None: float
    low_bit_grids: bool = True  # its quantized values fit an int8 grid (not binary signs, not a codebook)
    made_by: str = ""  # "stage 3 (quantize)" or "the checkpoint PATH", for messages


@dataclass
class StageRun:
    """What a stage's function receives: its config, its input checkpoint and its folder."""

    options: Any
    source: Path | None  # the input checkpoint (None for train)
    out_dir: Path | None  # the stage's folder, <recipe dir>/<NN-kind...> (train alone: None, the config's)
    resume: bool = False  # continue an interrupted stage inside it (StageKind.can_resume)
    values: dict[str, Any] = field(default_factory=dict)  # the keys as the recipe wrote them
    overwrite: bool = False  # replace a run already in out_dir (a command's --overwrite; recipes clear it first)
    data: Any = None  # an ImageDataset to use instead of the checkpoint's recorded data (a command's data flags)


@dataclass(frozen=True)
class StageKind:
    name: str
    config: str  # "module:Class" of its config
    function: Callable[[StageRun], dict[str, Any]]
    summary: str  # one line, for `effdl run --help` and the docs
    takes_checkpoint: bool = True
    makes_checkpoint: bool = True
    set_by_runner: tuple[str, ...] = ()  # keys the runner fills (where the outputs go)
    check: Callable[[ModelState, Any], None] | None = None  # raises EffdlError when it cannot take the input
    after: Callable[[ModelState, Any], ModelState] | None = None  # the model it hands on
    # Whether an interrupted run of these options continues inside the stage, given the files
    # `resume_needs` in its folder: True/False, or a function of the options.
    resumable: bool | Callable[[Any], bool] = False
    resume_needs: tuple[str, ...] = ("last.safetensors",)

    def can_resume(self, options: Any, folder: Path) -> bool:
        """Whether an interrupted run of `options` in `folder` can continue inside the stage."""
        able = self.resumable(options) if callable(self.resumable) else self.resumable
        return able and all((folder / name).is_file() for name in self.resume_needs)

    def config_class(self) -> type:
        module, _, name = self.config.partition(":")
        return getattr(importlib.import_module(module), name)


STAGES: Registry = Registry("recipe stage")

# What a compression stage's folder holds when its fine-tune can continue (effdl.pipelines.run_dir).
FINE_TUNE_RESUME = ("last.safetensors", "resume.json")


def register_stage(kind: StageKind) -> StageKind:
    STAGES.register(kind.name)(kind)
    return kind


# ---------------------------------------------------------------------------------------------------
# Config classes: dataclasses (prune, quantize...) and pydantic models (train, distill) alike.


def field_annotations(cls: type) -> dict[str, Any]:
    """A config class's settable fields and their types (a dataclass's or a pydantic model's)."""
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}
    fields = getattr(cls, "model_fields", None)
    if fields is None:
        raise TypeError(f"{cls.__name__} is neither a dataclass nor a pydantic model")
    return {name: f.annotation for name, f in fields.items()}


def required_fields(cls: type) -> list[str]:
    """The fields without a default."""
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)
                if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    return [name for name, f in cls.model_fields.items() if f.is_required()]


def accepts_list(annotation: Any) -> bool:
    """Whether a field of this type takes a list as ONE value (so a list there does not fan out)."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple):
        return True
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(accepts_list(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return False
    import collections.abc as abc

    return origin in (abc.Sequence, abc.Iterable)


# Command-line spellings whose recipe key has another name (`effdl distill --student` is `model`).
KEY_ALIASES = {"student": "model", "data": "dataset", "out": "out_dir"}


def build_options(cls: type, values: dict[str, Any]) -> Any:
    """An instance of config class `cls` from `values`, validated: each value against its field's
    type (pydantic's rules: "3" may be 3, "yes please" is no boolean, 1.5 no integer; but true is
    no number), a `device` against the devices this machine has, then by the config's own
    `validate()` when it has one (a pydantic config: its `refuse_unread_settings(values)` first).

    Raises EffdlError naming the key (with close names for an unknown one); the caller adds where
    it comes from."""
    from pydantic import TypeAdapter, ValidationError

    annotations = field_annotations(cls)
    unknown = [k for k in values if k not in annotations]
    if unknown:
        alias = KEY_ALIASES.get(unknown[0])
        close = [alias] if alias in annotations else difflib.get_close_matches(unknown[0], annotations, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; its keys: {', '.join(sorted(annotations))}"
        raise EffdlError(f"unknown key '{unknown[0]}'{hint}")
    for key, value in values.items():
        if isinstance(value, bool):  # YAML's true/yes: pydantic would take it as 1 where a number is due
            try:
                TypeAdapter(annotations[key]).validate_python(value, strict=True)
            except ValidationError:
                raise EffdlError(f"{key}: {value!r} is a boolean, not a value this key takes") from None
    if isinstance(values.get("device"), str):  # refused while planning, not when the stage starts
        from effdl.device import resolve_device

        resolve_device(values["device"])
    if dataclasses.is_dataclass(cls):
        checked = {}
        for key, value in values.items():
            try:
                checked[key] = TypeAdapter(annotations[key]).validate_python(value)
            except ValidationError as exc:
                raise EffdlError(f"{key}: {exc.errors()[0]['msg'].lower()} (got {value!r:.60})") from None
        missing = [k for k in required_fields(cls) if k not in checked]
        if missing:
            raise EffdlError(f"missing key '{missing[0]}'")
        options = cls(**checked)
        validate = getattr(options, "validate", None)
        if validate is not None:
            validate()
        return options
    refuse_unread = getattr(cls, "refuse_unread_settings", None)  # TrainConfig: momentum without sgd...
    if refuse_unread is not None:
        refuse_unread(values)
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(p) for p in error["loc"])
        raise EffdlError(f"{key}: {error['msg']} (got {error.get('input')!r:.60})") from None


def options_data(options: Any, *, changed_only: bool = False) -> dict[str, Any]:
    """A config as JSON data (what stage.json records). With `changed_only`, only the fields whose
    value differs from the field's default (what the stage's hash covers: a field added to a config
    class later, with a default that keeps the old behaviour, then leaves finished stages' hashes
    as they were)."""
    if dataclasses.is_dataclass(options):
        data = _json(dataclasses.asdict(options))
        if changed_only:
            for f in dataclasses.fields(options):
                if f.default is not dataclasses.MISSING:
                    default = f.default
                elif f.default_factory is not dataclasses.MISSING:
                    default = f.default_factory()
                else:
                    continue  # a required field always counts
                if dataclasses.is_dataclass(default):
                    default = dataclasses.asdict(default)
                if data.get(f.name) == _json(default):
                    del data[f.name]
        return data
    return _json(options.model_dump(mode="json", exclude_defaults=changed_only))


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _summary(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


# ---------------------------------------------------------------------------------------------------
# train and distill: a model trained into the stage's folder.


def _placed(options: Any, out_dir: Path) -> Any:
    return options.model_copy(update={"out_dir": str(out_dir.parent), "name": out_dir.name})


def _run_train(run: StageRun) -> dict[str, Any]:
    """Train into `run.out_dir` (None: where the config's out_dir and name say, the name chosen by
    train() itself, agreed across processes under torchrun)."""
    from effdl.train.run import resume, train

    if run.resume:
        result = resume(run.out_dir)
    else:
        config = _placed(run.options, run.out_dir) if run.out_dir is not None else run.options
        result = train(config, overwrite=run.overwrite)
    # Every process has the result; only rank 0 wrote summary.json (on its own filesystem).
    return {**_summary(Path(result.run_dir)), **dataclasses.asdict(result)}


def _check_names(options: Any) -> None:
    """The model and dataset a training stage names exist (before any stage runs)."""
    from effdl.data.datasets import dataset_reader
    from effdl.models.registry import check_model_options

    check_model_options(options.model, options.model_kwargs)
    if "dataset" in options.model_fields_set:  # a distill stage's default is its teacher's
        dataset_reader(options.dataset)


def _check_train(state: ModelState, options: Any) -> None:
    if state.exists:
        raise EffdlError(f"train builds a new model from scratch, but it would receive {state.made_by}'s; "
                         "put train first (without 'from:'), or use distill to train a student from that model")
    _check_names(options)


def _check_distill(state: ModelState, options: Any) -> None:
    options.method_config()  # an unknown method or a weight out of range
    if "model" in options.model_fields_set:
        _check_names(options)


def _fresh(state: ModelState, options: Any) -> ModelState:
    return ModelState(exists=True)


def _distill_options(run: StageRun) -> Any:
    """The distill stage's config, completed from its input: the teacher is the stage's input
    checkpoint unless the recipe names teachers, and the student's architecture is the teacher's
    unless the recipe names one (born-again distillation). The dataset defaults to the teacher's
    in effdl.pipelines.distill itself."""
    from effdl.checkpoint import read_checkpoint_meta

    update: dict[str, Any] = {}
    if "teacher" not in run.values:
        update["teacher"] = [str(run.source)]
    meta = read_checkpoint_meta(Path(update.get("teacher", run.options.teacher)[0]))
    if "model" not in run.values:
        update["model"] = meta["spec"]["name"]
        kwargs = {k: v for k, v in (meta["spec"].get("kwargs") or {}).items() if k != "num_classes"}
        if kwargs and "model_kwargs" not in run.values:
            update["model_kwargs"] = kwargs
    if "data_root" not in run.values:
        from effdl.pipelines.sources import recorded_data_root

        root = recorded_data_root(meta.get("config") or {})  # only where it still exists here
        if root:
            update["data_root"] = root
    return _placed(run.options.model_copy(update=update), run.out_dir)


def _run_distill(run: StageRun) -> dict[str, Any]:
    from effdl.pipelines.distill import distill

    distill(_distill_options(run), overwrite=run.overwrite, resume=run.resume)
    return _summary(run.out_dir)


# ---------------------------------------------------------------------------------------------------
# Techniques that compress a checkpoint into a run folder.


def _refuse_quantized(verb: str) -> Callable[[ModelState, Any], None]:
    def check(state: ModelState, options: Any) -> None:
        if state.quantized:
            raise EffdlError(f"cannot {verb} a quantized model ({state.made_by} quantized it: {state.quantized}); "
                             f"{verb} first, then quantize")

    return check


def _run_prune(run: StageRun) -> dict[str, Any]:
    from effdl.pipelines.prune import prune_checkpoint

    return prune_checkpoint(run.source, run.options, run.out_dir, data=run.data, overwrite=run.overwrite,
                            resume=run.resume)


def _run_factorize(run: StageRun) -> dict[str, Any]:
    from effdl.pipelines.factorize import factorize_checkpoint

    return factorize_checkpoint(run.source, run.options, run.out_dir, data=run.data, overwrite=run.overwrite,
                                resume=run.resume)


BINARY_METHODS = ("binaryconnect", "xnor")


def _check_quantize(state: ModelState, options: Any) -> None:
    if options.method == "sensitivity":
        raise EffdlError("method sensitivity writes a per-layer scan, not a model: run "
                         "`effdl quantize CKPT --method sensitivity` on a stage's checkpoint instead")
    if state.quantized:
        raise EffdlError(f"cannot quantize a quantized model: {state.made_by} is already quantized "
                         f"({state.quantized}); quantize the float checkpoint instead")


def _quantized(state: ModelState, options: Any) -> ModelState:
    from effdl.pipelines.quantize import quantization_config

    config = quantization_config(options)
    bits = getattr(config, "weight_bits", None) or getattr(config, "bits", None)
    label = options.method + (f" {bits}-bit" if bits else "")
    return ModelState(exists=True, quantized=label,
                      low_bit_grids=options.method not in (*BINARY_METHODS, "kmeans", "ternary"))


def _run_quantize(run: StageRun) -> dict[str, Any]:
    from effdl.pipelines.quantize import quantize_run

    return quantize_run(run.source, run.options, run.out_dir, data=run.data, overwrite=run.overwrite,
                        resume=run.resume)


# ---------------------------------------------------------------------------------------------------
# Measuring stages: they read the checkpoint they receive and hand it on unchanged.


def _check_export(state: ModelState, options: Any) -> None:
    if getattr(options, "int8", False) and state.quantized and not state.low_bit_grids:
        raise EffdlError(f"an int8 ONNX graph cannot hold {state.quantized} weights ({state.made_by}); "
                         "export it without int8, or quantize with ptq-int8 or qat instead")


def _run_export(run: StageRun) -> dict[str, Any]:
    from effdl.pipelines.export import export_checkpoint

    name = "model-int8.onnx" if getattr(run.options, "int8", False) else "model.onnx"
    run.out_dir.mkdir(parents=True, exist_ok=True)
    return export_checkpoint(run.source, run.options, run.out_dir / name)


def _run_bench(run: StageRun) -> dict[str, Any]:
    from effdl.pipelines.bench import bench_checkpoint

    run.out_dir.mkdir(parents=True, exist_ok=True)
    return bench_checkpoint(run.source, run.options, run.out_dir)


def _check_score(state: ModelState, options: Any) -> None:
    from effdl.measure.scoring import scorer_names

    if options.scorer != "all" and options.scorer not in scorer_names():
        from effdl.errors import unknown_name_error

        raise unknown_name_error("scorer", options.scorer, [*scorer_names(), "all"])


def _run_score(run: StageRun) -> dict[str, Any]:
    from effdl.pipelines.score import score_checkpoint

    return score_checkpoint(run.source, run.options)


def _unchanged(state: ModelState, options: Any) -> ModelState:
    return state


register_stage(StageKind("train", "effdl.train.config:TrainConfig", _run_train,
                         "train a model from scratch (the keys of `effdl train`)", takes_checkpoint=False,
                         set_by_runner=("name", "out_dir"), check=_check_train, after=_fresh, resumable=True))
register_stage(StageKind("distill", "effdl.pipelines.distill:DistillConfig", _run_distill,
                         "train a student from the input model as teacher (the keys of `effdl distill`)",
                         set_by_runner=("name", "out_dir"), check=_check_distill, after=_fresh, resumable=True,
                         resume_needs=("last.safetensors", "resume.json")))
register_stage(StageKind("prune", "effdl.pipelines.prune:PruneOptions", _run_prune,
                         "prune the input model (the keys of `effdl prune`)", check=_refuse_quantized("prune"),
                         after=lambda state, options: replace(state, exists=True),
                         resumable=lambda options: options.epochs >= 1 and options.fine_tunes_once(),
                         resume_needs=FINE_TUNE_RESUME))
register_stage(StageKind("factorize", "effdl.pipelines.factorize:FactorizeOptions", _run_factorize,
                         "factorize the input model's layers (the keys of `effdl factorize`)",
                         check=_refuse_quantized("factorize"), after=lambda state, options: replace(state, exists=True),
                         resumable=lambda options: options.epochs >= 1, resume_needs=FINE_TUNE_RESUME))
register_stage(StageKind("quantize", "effdl.pipelines.quantize:QuantizeOptions", _run_quantize,
                         "quantize the input model (the keys of `effdl quantize`)", check=_check_quantize,
                         after=_quantized, resumable=lambda options: options.epochs >= 1,
                         resume_needs=FINE_TUNE_RESUME))
register_stage(StageKind("export", "effdl.pipelines.export:ExportOptions", _run_export,
                         "export the input model to ONNX and verify it (the keys of `effdl export`)",
                         makes_checkpoint=False, check=_check_export, after=_unchanged))
register_stage(StageKind("bench", "effdl.pipelines.bench:BenchOptions", _run_bench,
                         "time the input model in PyTorch and ONNX Runtime (the keys of `effdl bench`)",
                         makes_checkpoint=False, check=_check_export, after=_unchanged))
register_stage(StageKind("score", "effdl.pipelines.score:ScoreOptions", _run_score,
                         "count and score the input model (the keys of `effdl score`)", makes_checkpoint=False,
                         check=_check_score, after=_unchanged))


def run_single_stage(kind: str, options: Any, out_dir: str | Path | None, *, source: str | Path | None = None,
                     overwrite: bool = False, data: Any = None, resume: bool = False) -> dict[str, Any]:
    """Run one stage outside a recipe, as the command of the same name does (`effdl prune ...`):
    the same stage function, after the same check of its input the recipe plan makes. `out_dir`
    None lets a train stage place its run as its config says. `data`: the
    dataset the command's data flags chose (None: the checkpoint's recorded one). `resume`: continue
    the interrupted run in `out_dir` (a command's --resume; kinds that can, StageKind.can_resume).

    Returns the stage's result (a run's summary, an export's report...). Raises EffdlError when the
    kind is unknown, a checkpoint is missing or the stage cannot take it (a quantized model to prune).
    """
    from effdl.errors import unknown_name_error

    if kind not in STAGES:
        raise unknown_name_error("stage kind", kind, STAGES)
    stage = STAGES[kind]
    if resume and overwrite:
        raise EffdlError("--resume continues the run at --out and --overwrite replaces it: give one of them")
    if resume and out_dir is not None and (Path(out_dir) / "summary.json").is_file():
        raise EffdlError(f"{out_dir} holds a finished run (summary.json): nothing to resume")
    if resume and not stage.can_resume(options, Path(out_dir) if out_dir is not None else Path()):
        raise EffdlError(f"nothing to resume at {out_dir}: no interrupted fine-tune of these options "
                         f"({', '.join(stage.resume_needs)} and a method that fine-tunes once)")
    state = ModelState()
    if source is not None:
        from effdl.checkpoint import read_checkpoint_meta

        state = state_of_checkpoint(read_checkpoint_meta(source), source)
    if stage.takes_checkpoint and not state.exists:
        raise EffdlError(f"{kind} needs a checkpoint to start from")
    if stage.check is not None:
        stage.check(state, options)
    return stage.function(StageRun(options, Path(source) if source is not None else None,
                                   Path(out_dir) if out_dir is not None else None, overwrite=overwrite, data=data,
                                   resume=resume))


def state_of_checkpoint(meta: dict[str, Any], path: str | Path) -> ModelState:
    """What a checkpoint's metadata says about its model (for a recipe's `from:`)."""
    names = {t.get("name") for t in meta.get("transforms") or [] if isinstance(t, dict)}
    made_by = f"the checkpoint {path}"
    if not names & {"quantize", "half"}:
        return ModelState(exists=True, made_by=made_by)
    method = (meta.get("quantize") or {}).get("method") or "quantized"
    return ModelState(exists=True, quantized=method, made_by=made_by,
                      low_bit_grids=method not in (*BINARY_METHODS, "kmeans", "ternary"))
