"""Hyper-parameter sweeps on optuna: any training key (or any key of a recipe's stages), grid,
random or TPE sampling, pruning on validation accuracy, several workers, resumable studies.

A study folder `<out>/<name>/` holds:
    sweep.yaml        the sweep as given (what `--resume` reloads)
    study.journal     optuna's journal (unless --storage names another storage)
    trial-NNNN/       each trial's normal run directory (or recipe folder, for recipe sweeps)
    trials.csv        one row per trial: number, state, parameters, value, accuracies, error
    best.yaml         the best trial's full training config, ready for `effdl train --config`
    importance.png    parameter importance (optuna.importance's default, PED-ANOVA) when 2+ trials completed
    curves.png        per-epoch validation accuracy of every trial

The objective is the validation accuracy of the trial's chosen epoch (`val_size` > 0), the
accuracy the pruner also watches epoch by epoch; without `val_size` the test accuracy is used, with
a warning, and pruning is refused (pruning on the test split would choose on it).

Grid sweeps enqueue every combination once at creation; the workers then pop them (each exactly
once, whatever the number of workers). Recipe sweeps name keys `STAGE.key`, STAGE a stage kind
(its first stage of that kind) or its 1-based index: `train.lr`, `2.sparsity`.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from effdl.console import say
from effdl.core.hooks import Callback
from effdl.errors import EffdlError
from effdl.search.space import Param, grid_size, parse_param
from effdl.search.storage import describe_storage, open_storage
from effdl.search.workers import counted_trials, run_trials

SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "halving")
SPEC_FILE = "sweep.yaml"
MAX_CHECKED = 64  # combinations of listed choices a sweep plans before its first trial


@dataclass
class SweepSpec:
    """A sweep: the base training config (or a recipe) and the keys to search (effdl.search.space)."""

    name: str
    params: dict[str, Any]  # key -> list / range / mapping (effdl.search.space)
    base: dict[str, Any] = field(default_factory=dict)  # training config values every trial shares
    recipe: str | None = None  # a recipe's YAML text: each trial runs it (params are STAGE.key)
    out: str = "runs"
    sampler: str = "tpe"
    trials: int | None = None  # grid: default (and at most) the grid's size
    pruner: str = "none"
    pruner_startup: int = 2  # trials finished before the pruner acts
    pruner_warmup: int = 0  # epochs of each trial before it may be pruned
    seed: int = 0
    first: list[dict[str, Any]] = field(default_factory=list)  # configurations tried first (enqueued)
    retries: int = 1  # times a trial whose worker died is run again
    storage: str | None = None  # none: <study>/study.journal

    @property
    def directory(self) -> Path:
        return Path(self.out) / self.name

    def parsed(self) -> list[Param]:
        params = []
        for key, value in self.params.items():
            param = parse_param(str(key), value)
            if param is None:
                param = Param(str(key), "categorical", choices=(value,))
            params.append(param)
        return params

    def validate(self) -> None:
        """Every check that needs no training. Raises EffdlError (one line)."""
        if not self.name or "/" in self.name:
            raise EffdlError(f"the study's name must be a folder name, got {self.name!r}")
        if self.sampler not in SAMPLERS:
            raise EffdlError(f"unknown sampler '{self.sampler}'; samplers: {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise EffdlError(f"unknown pruner '{self.pruner}'; pruners: {', '.join(PRUNERS)}")
        if not self.params:
            raise EffdlError("nothing to sweep: give at least one parameter, such as --param lr=1e-3..1e-1")
        params = self.parsed()
        if self.sampler == "grid":
            size = grid_size(params)
            if self.trials is not None and self.trials < size:
                raise EffdlError(f"the grid has {size} combinations but trials is {self.trials}; "
                                 "drop trials (a grid runs every combination) or use sampler random")
        elif self.trials is None or self.trials < 1:
            raise EffdlError(f"sampler {self.sampler} needs a number of trials (--trials N)")
        if self.pruner != "none":
            if self.recipe is not None:
                raise EffdlError("pruning watches a training's epochs: it works on training sweeps, not recipes")
            if not self.base.get("val_size"):
                raise EffdlError("pruning needs a validation split (val_size > 0): pruning on the test "
                                 "accuracy would choose on the test split")
        # Every key must exist and every choice must make a valid config: build the first
        # combination's config (or plan its recipe) with each combination of the listed choices
        # (up to MAX_CHECKED), so a bad one is refused now, not as a failed trial hours later.
        first = {p.name: (p.grid()[0] if p.kind == "categorical" or p.step or p.kind == "int" else p.low)
                 for p in params}
        listed = [p for p in params if p.kind == "categorical"]
        combos = itertools.islice(itertools.product(*(p.choices for p in listed)), MAX_CHECKED)
        checked = [{**first, **dict(zip((p.name for p in listed), combo))} for combo in combos]
        for values in [*checked, *self.first]:
            unknown = set(values) - {p.name for p in params}
            if unknown:
                raise EffdlError(f"first configuration names key(s) not swept: {', '.join(sorted(unknown))}")
            trial_setup(self, {**first, **values}, Path(self.out), "trial-check", plan_only=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(asdict(self), sort_keys=False)


def load_spec(study: str | Path) -> SweepSpec:
    """The sweep of a study folder (its sweep.yaml). Raises EffdlError when there is none."""
    path = Path(study) / SPEC_FILE
    if not path.is_file():
        raise EffdlError(f"no sweep in {study}: {SPEC_FILE} not found (give the study folder, such as runs/NAME)")
    try:
        values = yaml.safe_load(path.read_text())
        spec = SweepSpec(**values)
    except (yaml.YAMLError, TypeError) as exc:
        raise EffdlError(f"{path} is not a sweep file: {str(exc).splitlines()[0]}") from None
    spec.out = str(Path(study).parent)  # the folder may have moved
    return spec


# ---------------------------------------------------------------------------------------------------
# One trial: a training run (or a recipe run) in <study>/trial-NNNN.


def _stage_index(recipe: Any, ref: str) -> int:
    if ref.isdigit():
        index = int(ref)
        if not 1 <= index <= len(recipe.stages):
            raise EffdlError(f"recipe key '{ref}.…': the recipe has stages 1..{len(recipe.stages)}")
        return index - 1
    for i, stage in enumerate(recipe.stages):
        if stage.kind == ref:
            return i
    raise EffdlError(f"recipe key '{ref}.…': no stage of kind {ref} (stages: "
                     f"{', '.join(s.kind for s in recipe.stages)})")


def trial_setup(spec: SweepSpec, values: dict[str, Any], parent: Path, name: str, *, plan_only: bool = False) -> Any:
    """The TrainConfig (training sweeps) or Recipe (recipe sweeps) of one trial with `values`, placed
    at `parent/name`; `plan_only` validates without writing. Raises EffdlError for an unknown key or
    a bad value."""
    if spec.recipe is None:
        from effdl.train.config import make_config, merge, without_unread_settings

        # A trial whose optimizer or schedule does not read a swept key (momentum in an adamw trial)
        # trains without it, as it would have anyway, and says so.
        config_values = without_unread_settings(merge(spec.base, values), where=f"sweep {spec.name}, {name}")
        config_values.update(out_dir=str(parent), name=name)
        config_values.setdefault("progress", False)
        return make_config(config_values, source=f"sweep {spec.name}, {name}")
    from effdl.recipes import make_plan, recipe_from_text

    recipe = recipe_from_text(spec.recipe, default_name=name)
    for key, value in values.items():
        ref, sep, leaf = key.partition(".")
        if not sep or not leaf:
            raise EffdlError(f"recipe sweep key '{key}' must be STAGE.key, such as train.lr or 2.sparsity")
        stage = recipe.stages[_stage_index(recipe, ref)]
        for keys in stage.mappings():  # every alternative of the stage
            keys[leaf] = value
        stage.swept += (leaf,)  # a key the trial's value leaves unread is left out, as in a fan-out
    recipe.name, recipe.out = name, str(parent)
    for stage in recipe.stages:
        if stage.kind == "train":
            for keys in stage.mappings():
                keys.setdefault("progress", False)
    if plan_only:
        plan = make_plan(recipe)
        if len(plan.branches) != 1:
            raise EffdlError("a recipe sweep runs one branch per trial: sweep the list-valued keys instead "
                             "of fanning them out (or listing a stage's alternatives) in the recipe")
    return recipe


class ReportValidation(Callback):
    """A training callback that reports each epoch's validation accuracy to the optuna trial and
    raises optuna.TrialPruned when the study's pruner says so."""

    def __init__(self, trial: Any):
        self.trial = trial

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, Any]) -> None:
        import optuna

        value = float(metrics["eval_acc"])  # the validation split's accuracy (trainer: eval_data)
        self.trial.report(value, epoch + 1)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"at epoch {epoch + 1}: validation accuracy {value:.4f}")


def _objective(spec: SweepSpec, params: list[Param]) -> Any:
    study_dir = spec.directory

    def objective(trial: Any) -> float:
        values = {p.name: p.suggest(trial) for p in params}
        name = f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(study_dir / name))
        setup = trial_setup(spec, values, study_dir, name)
        if spec.recipe is None:
            from effdl.train.run import train

            callbacks = [ReportValidation(trial)] if spec.pruner != "none" else None
            result = train(setup, callbacks=callbacks)
            summary = json.loads((Path(result.run_dir) / "summary.json").read_text())
        else:
            from effdl.recipes import run_recipe

            outcome = run_recipe(setup, report=False)
            summary = next((r for r in reversed(list(outcome.results.values())) if "accuracy" in r), None)
            if summary is None:
                raise EffdlError("the recipe's stages report no accuracy to optimise")
        on_val = summary.get("selected_on") == "val"
        trial.set_user_attr("test_accuracy", summary.get("accuracy"))
        trial.set_user_attr("val_accuracy", summary.get("best_eval_accuracy") if on_val else None)
        trial.set_user_attr("time_s", summary.get("time_s"))
        value = summary["best_eval_accuracy"] if on_val else summary["accuracy"]
        if value is None or not math.isfinite(value):
            raise EffdlError(f"trial {trial.number} produced no finite accuracy")
        return float(value)

    return objective


def _sampler(spec: SweepSpec, stream: int = 0, trials_so_far: int = 0) -> Any:
    """The sampler. Its seed moves with the worker's `stream` and with the trials the study held when
    the worker joined, by two different primes, so no two workers (nor a later join) share a seed."""
    import optuna

    seed = spec.seed + 7919 * stream + 104729 * trials_so_far
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)  # grid: the combinations are enqueued


def _pruner(spec: SweepSpec) -> Any:
    import optuna

    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.pruner_startup, n_warmup_steps=spec.pruner_warmup)
    if spec.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, spec.pruner_warmup))
    return optuna.pruners.NopPruner()


def target_trials(spec: SweepSpec) -> int:
    return spec.trials if spec.trials is not None else grid_size(spec.parsed())


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def load_study(spec: SweepSpec, *, workers: int = 1, create: bool = False, stream: int = 0) -> Any:
    """The optuna study of `spec` (created with `create`). Raises EffdlError when the storage cannot
    be opened, or the study exists (create) / does not (join)."""
    import optuna

    _quiet_optuna()
    storage = open_storage(spec.storage, spec.directory, workers=workers)
    where = describe_storage(spec.storage, spec.directory)
    try:
        if create:
            return optuna.create_study(study_name=spec.name, storage=storage, direction="maximize",
                                       sampler=_sampler(spec), pruner=_pruner(spec))
        study = optuna.load_study(study_name=spec.name, storage=storage, pruner=_pruner(spec))
        # A worker (or a later join) draws its own stream: the seed moves with the worker and the trials so far.
        study.sampler = _sampler(spec, stream, len(study.get_trials(deepcopy=False))) if stream else _sampler(spec)
        return study
    except optuna.exceptions.DuplicatedStudyError:
        raise EffdlError(f"study {spec.name} already exists in {where}; join it with `effdl sweep --resume "
                         f"{spec.directory}` or pick another --name") from None
    except KeyError:
        raise EffdlError(f"no study {spec.name} in {where}") from None


def create_sweep(spec: SweepSpec, workers: int = 1) -> Path:
    """Validate `spec`, write its folder and create its study (grid combinations enqueued).

    Raises EffdlError for anything invalid, before any training."""
    spec.validate()
    directory = spec.directory
    if (directory / SPEC_FILE).exists():
        raise EffdlError(f"{directory} already holds a sweep; join it with `effdl sweep --resume {directory}` "
                         "or pick another --name")
    if spec.storage is not None:  # refused before anything is written (SQLite with workers, unreachable)
        open_storage(spec.storage, directory, workers=workers)
    directory.mkdir(parents=True, exist_ok=True)
    study = load_study(spec, workers=workers, create=True)
    (directory / SPEC_FILE).write_text(spec.to_yaml())
    for values in spec.first:
        study.enqueue_trial(values)
    if spec.sampler == "grid":
        import itertools

        params = spec.parsed()
        for combination in itertools.product(*(p.grid() for p in params)):
            study.enqueue_trial(dict(zip((p.name for p in params), combination)))
    return directory


def work(study_dir: str | Path, storage: str | None = None, worker: int = 1) -> int:
    """One worker: run the study's trials until it has enough (effdl.search.workers.run_trials).
    Returns the number of trials this worker ran."""
    spec = load_spec(study_dir)
    if storage is not None:
        spec.storage = storage
    study = load_study(spec, stream=worker)
    params = spec.parsed()
    return run_trials(study, spec.directory, target_trials(spec), _objective(spec, params), retries=spec.retries,
                      say=say)


def _worker_main(study_dir: str, storage: str | None, threads: int | None, worker: int) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        work(study_dir, storage, worker)
    except EffdlError as exc:  # a worker's own error, printed whatever RANK a launcher set
        print(f"effdl: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def run_workers(study_dir: str | Path, workers: int = 1, storage: str | None = None,
                threads_per_worker: int | None = None) -> None:
    """Run the study with `workers` processes of this machine (1: in this process) and wait.

    Raises EffdlError when a worker process failed (its running trial is recovered by `--resume`)."""
    if workers < 1:
        raise EffdlError(f"--workers must be at least 1, got {workers}")
    spec = load_spec(study_dir)
    open_storage(storage or spec.storage, spec.directory, workers=workers)  # refuses SQLite with several
    if workers == 1:
        work(study_dir, storage)
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch threads
    processes = [context.Process(target=_worker_main, args=(str(study_dir), storage, threads_per_worker, i + 1))
                 for i in range(workers)]
    for p in processes:
        p.start()
    try:
        for p in processes:
            p.join()
    except KeyboardInterrupt:
        for p in processes:
            p.join(timeout=30)
        raise
    failed = [p.exitcode for p in processes if p.exitcode not in (0, None)]
    if failed:
        raise EffdlError(f"{len(failed)} of {workers} workers stopped (exit codes {failed}); their running trials "
                         f"are retried by `effdl sweep --resume {study_dir}`")


# ---------------------------------------------------------------------------------------------------
# Results


@dataclass
class SweepResult:
    directory: Path
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None  # the best completed trial's row
    files: dict[str, str]


def _epoch_curve(run_dir: str | None) -> list[float]:
    if not run_dir:
        return []
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    curve = []
    for line in path.read_text().splitlines():
        try:
            curve.append(float(json.loads(line)["eval_acc"]))
        except (ValueError, KeyError):
            continue
    return curve


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial: number, state, params, value, accuracies, error (JSON-safe)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        rows.append({"number": t.number, "state": t.state.name.lower(), **{f"param:{k}": v for k, v in t.params.items()},
                     "value": t.value if t.values is not None and len(t.values) == 1 else None,
                     "val_accuracy": attrs.get("val_accuracy"), "test_accuracy": attrs.get("test_accuracy"),
                     "time_s": attrs.get("time_s"), "run_dir": attrs.get("run_dir"),
                     "error": attrs.get("error") or attrs.get("pruned") or attrs.get("infeasible")})
    return rows


def finish_sweep(study_dir: str | Path) -> SweepResult:
    """Write the study's results (module docstring): trials.csv, best.yaml, importance.png, curves.png."""
    spec = load_spec(study_dir)
    study = load_study(spec)
    directory = spec.directory
    rows = trial_rows(study)
    files: dict[str, str] = {}
    if rows:
        keys = list(dict.fromkeys(k for row in rows for k in row))
        with open(directory / "trials.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        files["trials"] = str(directory / "trials.csv")
    completed = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    best = max(completed, key=lambda r: r["value"]) if completed else None
    if best is not None:
        config_path = Path(best["run_dir"]) / "config.yaml"
        if spec.recipe is None and config_path.is_file():
            values = yaml.safe_load(config_path.read_text())
            values.pop("name", None)  # `effdl train --config best.yaml` then names its own run
            values["out_dir"] = "runs"
            header = f"# best trial {best['number']} of sweep {spec.name}: value {best['value']:.4f}\n"
            (directory / "best.yaml").write_text(header + yaml.safe_dump(values, sort_keys=False))
        elif spec.recipe is not None:
            trial = study.trials[best["number"]]
            recipe_text = _recipe_with(spec, dict(trial.params))
            (directory / "best.yaml").write_text(recipe_text)
        files["best"] = str(directory / "best.yaml")
    from effdl.search.plots import plot_curves, plot_importance

    # Per-epoch validation accuracy: what the trial reported to the pruner (a pruned trial stops
    # before its epoch's metrics line), else the run's metrics.jsonl.
    curves = {}
    for t, r in zip(study.get_trials(deepcopy=False), rows):
        reported = [t.intermediate_values[k] for k in sorted(t.intermediate_values)]
        curves[r["number"]] = (reported or _epoch_curve(r["run_dir"]), r["state"])
    if any(c for c, _ in curves.values()):
        files["curves"] = str(plot_curves(curves, directory / "curves.png", title=f"sweep {spec.name}"))
    if len(completed) >= 2 and len(spec.parsed()) >= 1:
        try:
            import optuna

            importance = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError, ImportError) as exc:  # e.g. every completed trial identical
            say(f"parameter importance skipped: {str(exc).splitlines()[0]}")
            importance = {}
        if importance:
            files["importance"] = str(plot_importance(importance, directory / "importance.png",
                                                      title=f"sweep {spec.name}"))
            (directory / "importance.json").write_text(json.dumps(importance, indent=2))
    return SweepResult(directory, rows, best, files)


def _recipe_with(spec: SweepSpec, values: dict[str, Any]) -> str:
    data = yaml.safe_load(spec.recipe)
    for key, value in values.items():
        ref, _, leaf = key.partition(".")
        index = int(ref) - 1 if ref.isdigit() else next(i for i, s in enumerate(data["stages"]) if ref in s)
        stage = data["stages"][index]
        kind = next(iter(stage))
        if isinstance(stage[kind], list):  # the list form: every alternative
            stage[kind] = [{**alternative, leaf: value} for alternative in stage[kind]]
        else:
            stage[kind] = {**(stage[kind] or {}), leaf: value}
    data.pop("name", None)
    return yaml.safe_dump(data, sort_keys=False)


def run_sweep(spec: SweepSpec, *, workers: int = 1, threads_per_worker: int | None = None) -> SweepResult:
    """Create the sweep's study, run its trials with `workers` local processes, write the results.

    Raises EffdlError for an invalid sweep (before any training) or a worker that stopped."""
    directory = create_sweep(spec, workers)
    for line in describe_sweep(spec):
        say(line)
    run_workers(directory, workers, threads_per_worker=threads_per_worker)
    return finish_sweep(directory)


def resume_sweep(study_dir: str | Path, *, workers: int = 1, storage: str | None = None,
                 threads_per_worker: int | None = None) -> SweepResult:
    """Join an existing study (this machine or another sharing its storage): dead workers' running
    trials are marked failed and retried, then the remaining trials run."""
    spec = load_spec(study_dir)
    if storage is not None:
        spec.storage = storage
    study = load_study(spec, workers=workers)
    done = len(counted_trials(study))
    say(f"joining study {spec.name}: {done} of {target_trials(spec)} trials started before")
    run_workers(study_dir, workers, storage=storage, threads_per_worker=threads_per_worker)
    return finish_sweep(study_dir)


def describe_sweep(spec: SweepSpec) -> list[str]:
    params = spec.parsed()
    return [f"sweep {spec.name}: {target_trials(spec)} trial(s), sampler {spec.sampler}, pruner {spec.pruner}, "
            f"in {spec.directory}/ (storage {describe_storage(spec.storage, spec.directory)})",
            *("  " + p.describe() for p in params)]
