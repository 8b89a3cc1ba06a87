"""`run_recipe`: run a recipe's plan stage by stage, resumably, then write its report.

Layout: `<out>/<recipe>/<NN-kind[+key=value...]>/` per stage, each what the stage's own command
writes (a training run's config.yaml, metrics.jsonl, best.safetensors, summary.json; an export's
ONNX file...) plus `stage.json`, the runner's record: the stage's hash, config, input and status
("running", "done" with its result, or "failed" with the error). Then `<out>/<recipe>/report/`.

Resuming (running the same recipe again):
- a stage whose stage.json says "done" with the same hash, and whose outputs are there, is skipped;
- a train or distill stage interrupted with the same config continues inside itself from its
  last.safetensors, and so does a prune, factorize or quantize stage's fine-tune (methods that
  fine-tune in one phase: the compression is redone, then the fine-tune continues);
  any other interrupted, failed or changed stage runs again from its start, and so does every
  stage after it; the runner says why, and a finished stage's old folder is kept aside as
  `NN-kind.replaced-<hash>` (an unfinished one is replaced); "changed" compares the config key by
  key with the recorded one, so a key a newer effdl adds with its default value changes nothing;
- a folder the runner did not write (no stage.json) is never deleted: the run stops and says so.
A stage that fails marks its branch failed; the other branches go on, and the run ends with one
error naming every failure and how to resume. Ctrl-C stops at once, keeping what is finished.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effdl.console import say
from effdl.errors import EffdlError, Interrupted
from effdl.fileio import atomic_write, file_hash
from effdl.recipes.plan import Plan, PlannedStage, hashed_options, keys_text, make_plan
from effdl.recipes.spec import Recipe, shipped_recipes
from effdl.recipes.stages import StageRun, options_data
from effdl.report.runs import REPLACED_MARK
from effdl.train.config import PRESENTATION_KEYS

STATE_FILE = "stage.json"


@dataclass
class RecipeResult:
    plan: Plan
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # folder -> the stage's result
    skipped: list[str] = field(default_factory=list)  # folders found done and not run again
    failed: dict[str, str] = field(default_factory=dict)  # folder -> error message
    report: dict[str, Any] | None = None  # effdl.recipes.report's summary (None: nothing to report)


def read_state(path: Path) -> dict[str, Any] | None:
    """A stage folder's stage.json (None when missing or unreadable: the stage runs again)."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _write_state(path: Path, state: dict[str, Any]) -> None:
    text = json.dumps(state, indent=2, default=str) + "\n"
    atomic_write(path / STATE_FILE, lambda tmp: Path(tmp).write_text(text))


def _outputs_present(plan: Plan, stage: PlannedStage) -> bool:
    path = plan.directory(stage)
    return (path / "best.safetensors").is_file() if stage.kind.makes_checkpoint else True


def _input_hash(plan: Plan, stage: PlannedStage) -> str | None:
    source = plan.input_checkpoint(stage)
    return file_hash(source) if source is not None and source.is_file() else None


def stage_status(plan: Plan, stage: PlannedStage, statuses: dict[str, str] | None = None) -> str:
    """What running the plan would do with `stage`: done (skip), resume, rerun (changed, failed or
    interrupted: its folder is replaced, a finished one kept aside) or run (new). A stage whose input
    stage will run again, or whose input checkpoint is no longer the file it was made from, runs
    again too. `statuses`: the statuses already decided for earlier stages, by folder."""
    return judge_stage(plan, stage, statuses)[0]


def judge_stage(plan: Plan, stage: PlannedStage, statuses: dict[str, str] | None = None) -> tuple[str, str]:
    """(`stage_status`, why: empty for done and run, else the reason a user reads)."""
    path = plan.directory(stage)
    state = read_state(path)
    if state is None:
        if (path / STATE_FILE).exists():
            return "rerun", f"its {STATE_FILE} is unreadable"
        return ("rerun", f"its folder has no {STATE_FILE}") if path.exists() and any(path.iterdir()) else ("run", "")
    upstream = (statuses or {}).get(stage.input.folder, "done") if stage.input is not None else "done"
    if upstream != "done":
        return "rerun", f"its input stage {stage.input.folder} runs again"
    if state.get("input_sha") not in (None, _input_hash(plan, stage)):
        return "rerun", "its input checkpoint is no longer the file it was made from"
    changes = config_changes(state, stage)
    if changes:
        return "rerun", "its config changed (" + ", ".join(changes) + ")"
    if state.get("status") == "done":
        return ("done", "") if _outputs_present(plan, stage) else ("rerun", "its outputs are missing")
    if state.get("status") == "running" and stage.kind.can_resume(stage.options, path):
        return "resume", ""
    return "rerun", "it failed before" if state.get("status") == "failed" else "it was interrupted"


def config_changes(state: dict[str, Any], stage: PlannedStage) -> list[str]:
    """How `stage`'s config differs from the one its stage.json recorded ("key old -> new"), empty
    when it is the same run: the same hash, or the same values key by key, where a key the record
    lacks (added to effdl since) counts as unchanged when it holds its default. Presentation keys
    never count."""
    if state.get("hash") == stage.hash and state.get("kind") == stage.spec.kind:
        return []
    recorded = state.get("options")
    if state.get("kind") != stage.spec.kind or not isinstance(recorded, dict):
        return ["another kind of stage" if state.get("kind") != stage.spec.kind else "no recorded config"]
    current = options_data(stage.options)
    set_away_from_default = hashed_options(stage.options)
    changes = []
    for key, value in current.items():
        if key in PRESENTATION_KEYS:
            continue
        if key in recorded:
            if recorded[key] != value:
                changes.append(f"{key} {recorded[key]!r} -> {value!r}")
        elif key in set_away_from_default:
            changes.append(f"{key} (new) {value!r}")
    return changes


def describe_plan(plan: Plan) -> list[str]:
    """The plan as lines: one per branch, then one per stage with its status and its keys."""
    lines = [f"recipe {plan.recipe.name}: {len(plan.recipe.stages)} stage(s), {len(plan.branches)} branch(es), "
             f"in {plan.recipe.directory}/" + (f", from {plan.recipe.source}" if plan.recipe.source else "")]
    shown: set[int] = set()
    statuses: dict[str, str] = {}
    for number, branch in enumerate(plan.branches, start=1):
        choices = keys_text(branch[-1].choices, "no fan-out")
        lines.append(f"branch {number} ({choices}):")
        for stage in branch:
            if id(stage) in shown:
                lines.append(f"  {stage.folder}  (shared, above)")
                continue
            shown.add(id(stage))
            keys = keys_text(stage.values.items(), "defaults")
            if stage.left_out:
                keys += f"; left out, not read here: {', '.join(stage.left_out)}"
            status, why = judge_stage(plan, stage, statuses)
            statuses[stage.folder] = status
            lines.append(f"  {stage.folder}  [{status}]  {keys}" + (f"  ({why})" if why else ""))
    unused = unplanned_folders(plan)
    if unused:
        lines.append(f"not in this plan, kept as they are: {', '.join(unused)} (earlier branches; the report "
                     "leaves them out)")
    return lines


def unplanned_folders(plan: Plan) -> list[str]:
    """The stage folders in the recipe's directory that no planned stage owns: branches of an
    earlier version of the recipe (a changed fan-out, or a stage's form), never deleted."""
    directory = plan.recipe.directory
    if not directory.is_dir():
        return []
    planned = {stage.folder for stage in plan.stages}
    return sorted(path.name for path in directory.iterdir()
                  if path.is_dir() and path.name not in planned and ".replaced-" not in path.name
                  and (path / STATE_FILE).is_file())


def _prepare(plan: Plan, stage: PlannedStage, status: str) -> Path:
    """Make `stage`'s folder ready for a fresh run and mark it running. An old folder's content
    goes, except a finished stage's, which is kept aside (`kept_aside`): work is never lost."""
    path = plan.directory(stage)
    if status == "rerun" and path.exists():
        # Only ever a folder the runner made: <out>/<recipe>/<NN-...> with its stage.json.
        state = read_state(path)
        if path.resolve().parent != plan.recipe.directory.resolve() or state is None:
            raise EffdlError(f"{path} holds something this recipe did not write (no readable {STATE_FILE}); nothing was "
                             "deleted: move it away, or give the recipe another name (--name)")
        if state.get("status") == "done":
            aside = kept_aside(path, state)
            path.rename(aside)
            say(f"   the finished run it replaces is kept in {aside}")
        else:
            shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    source = plan.input_checkpoint(stage)
    _write_state(path, {"status": "running", "hash": stage.hash, "kind": stage.spec.kind, "stage": stage.spec.index,
                        "values": stage.values, "left_out": list(stage.left_out), "options": options_data(stage.options),
                        "input": str(source) if source else None, "input_sha": _input_hash(plan, stage),
                        "started": time.time()})
    return path


def kept_aside(path: Path, state: dict[str, Any]) -> Path:
    """Where a finished stage's folder goes when its stage runs again: beside it, named by its
    hash (`02-prune.replaced-<hash>`, a number added when that name is taken). The recipe's plan and
    report ignore these folders, and so does `effdl report` unless one is named alone."""
    base = path.with_name(f"{path.name}{REPLACED_MARK}{state.get('hash') or 'unknown'}")
    aside, number = base, 1
    while aside.exists():
        number += 1
        aside = base.with_name(f"{base.name}-{number}")
    return aside


def _make_folder(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EffdlError(f"cannot create the recipe's folder {path}: {exc.strerror or exc}") from None


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _run_stage(plan: Plan, stage: PlannedStage, status: str) -> dict[str, Any]:
    """Run one stage. Under torchrun a stage that makes a checkpoint (and so may train) runs in
    every process, data-parallel; a measuring stage (export, bench, score) runs on rank 0 alone;
    rank 0 alone writes the runner's files."""
    from effdl.train import distributed

    path = plan.directory(stage)
    if status != "resume":
        distributed.on_main_then_share(lambda: _prepare(plan, stage, status))
    source = plan.input_checkpoint(stage)
    run = StageRun(options=stage.options, source=source, out_dir=path, resume=status == "resume", values=stage.values)
    if stage.kind.makes_checkpoint:
        result = _json_safe(stage.kind.function(run) or {})
    else:
        result = distributed.on_main_then_share(lambda: _json_safe(stage.kind.function(run) or {}))
    if distributed.is_main():
        if not stage.kind.makes_checkpoint:
            text = json.dumps(result, indent=2) + "\n"
            atomic_write(path / "result.json", lambda tmp: Path(tmp).write_text(text))
        state = read_state(path) or {}
        _write_state(path, {**state, "status": "done", "finished": time.time(), "result": result})
    distributed.barrier()
    return result


def _resume_hint(plan: Plan) -> str:
    """The command that continues `plan`: a shipped recipe by its name, with the checkpoint and the
    output folder it was given (a shipped recipe names neither)."""
    recipe = plan.recipe
    shipped = recipe.path is not None and shipped_recipes().get(recipe.path.stem) == recipe.path
    where = recipe.path.stem if shipped else recipe.path if recipe.path is not None else recipe.name
    flags = (f" --from {shlex.quote(str(recipe.source))}" if recipe.source else "") + (
        f" --out {shlex.quote(str(recipe.out))}" if recipe.out != "runs" else "")
    return f"`effdl run {shlex.quote(str(where))}{flags}` resumes: finished stages are skipped"


def run_recipe(recipe: Recipe, *, dry_run: bool = False, report: bool = True) -> RecipeResult:
    """Plan `recipe` (refusing anything invalid before the first stage runs), run every branch's
    stages in order, then write the report (effdl.recipes.report) unless `report` is False.

    With `dry_run`, only plans and prints the plan (nothing is written). Raises EffdlError when a
    stage failed (after the other branches ran) and effdl.errors.Interrupted on Ctrl-C; both keep
    every finished stage and say how to resume.

    Under torchrun (`torchrun --nproc_per_node N -m effdl run RECIPE`) every process calls this:
    rank 0 judges each stage and writes every file, the stages that make a checkpoint train
    data-parallel in all processes, and measuring stages and the report run on rank 0 alone.
    """
    from effdl.train import distributed

    plan = make_plan(recipe)
    for line in describe_plan(plan):
        say(line)
    outcome = RecipeResult(plan)
    if dry_run:
        return outcome
    distributed.init_from_env()  # under torchrun: one data-parallel job, rank 0 decides and writes
    distributed.on_main_then_share(lambda: _make_folder(recipe.directory))
    failed_ids: set[int] = set()
    statuses: dict[str, str] = {}
    for branch in plan.branches:
        for stage in branch:
            if stage.folder in outcome.results or id(stage) in failed_ids:
                continue
            if any(id(s) in failed_ids for s in branch[: branch.index(stage)]):
                failed_ids.add(id(stage))  # an earlier stage of this branch failed
                continue
            status, why = distributed.on_main_then_share(lambda: judge_stage(plan, stage, statuses))
            statuses[stage.folder] = status
            if status == "done":
                say(f"== {stage.folder}: done before, skipped")
                outcome.results[stage.folder] = (read_state(plan.directory(stage)) or {}).get("result", {})
                outcome.skipped.append(stage.folder)
                continue
            what = {"resume": "resuming inside the stage", "rerun": f"running again: {why}", "run": "running"}[status]
            say(f"== {stage.folder}: {what}")
            try:
                outcome.results[stage.folder] = _run_stage(plan, stage, status)
            except KeyboardInterrupt:
                raise Interrupted(f"stopped during {stage.folder}; the finished stages are kept in "
                                  f"{recipe.directory}/; {_resume_hint(plan)}") from None
            except EffdlError as exc:
                failed_ids.add(id(stage))
                outcome.failed[stage.folder] = str(exc)
                path = plan.directory(stage)
                state = read_state(path) if distributed.is_main() else None
                if state is not None:  # never write into a folder the runner did not make (no stage.json)
                    _write_state(path, {**state, "status": "failed", "error": str(exc)})
                say(f"== {stage.folder} failed: {exc}")
    if report and distributed.is_main():
        from effdl.recipes.report import write_report

        outcome.report = write_report(plan, outcome)
    # Every process leaves together: one that exits while rank 0 still writes the report tears the
    # process group down under it (gloo aborts the process).
    distributed.barrier()
    if outcome.failed:
        first, message = next(iter(outcome.failed.items()))
        others = f" (and {len(outcome.failed) - 1} more stage(s); see their stage.json)" if len(outcome.failed) > 1 else ""
        raise EffdlError(f"stage {first} failed: {message}{others}; the finished stages are kept in "
                         f"{recipe.directory}/; fix the recipe, then {_resume_hint(plan)}")
    return outcome
