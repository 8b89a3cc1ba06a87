"""A recipe's plan: every branch's stages, validated and hashed before the first one runs.

Planning checks everything that can be checked without running anything, and names the stage, the
key and the YAML line of what it refuses:
- each stage's kind exists, its keys are fields of the kind's config class, the values build a
  valid config (its own validation), and no key is one the runner sets (where outputs go);
- fan-out: a key given a list where its field takes one value (`bits: [8, 4, 2]`), or a list of
  lists where it takes a list, branches the recipe; several fan-out keys in one stage branch on every
  combination, and later stages run once per branch; a stage given a list of mappings
  (`- quantize: [{method: ptq-int8}, {method: qat, act_bits: 4}]`) branches once per mapping, each
  with keys of its own (and fan-outs of its own); a key shared by a fan-out's branches that a
  branch's choice leaves unread (`act_bits` under `method: [ptq-int8, qat]`, `lr` under
  `epochs: [0, 4]`) is left out of that branch and said so, and refused when no branch reads it;
- every stage can take the model it will receive: a first stage that needs a checkpoint gets one
  (`from:` or a train stage), training happens only first, nothing quantizes, prunes or factorizes
  a quantized model, an int8 graph is never asked of binary weights (effdl.recipes.stages checks).

Each planned stage has a content hash over its kind, its config and its input (the hash of the
stage that made its input checkpoint, or the bytes of the `from:` file), so an unchanged stage is
recognised on the next run and skipped (effdl.recipes.runner).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from effdl.errors import EffdlError, UnreadOptionError, unknown_name_error
from effdl.fileio import file_hash
from effdl.recipes.spec import Recipe, StageSpec
from effdl.train.config import PRESENTATION_KEYS
from effdl.recipes.stages import (
    STAGES, ModelState, StageKind, accepts_list, build_options, field_annotations, options_data, state_of_checkpoint,
)

PLAN_FORMAT = 2  # part of every hash: bump it when what a stage's folder holds changes meaning

# Keys a stage may leave out because the runner fills them from its input (see stages._distill_options).
FILLED_FROM_INPUT = {"distill": ("teacher",)}

MAX_FOLDER_NAME = 120  # longer fan-out names become NN-kind+<hash of the choices> (file systems allow 255)


@dataclass(eq=False)
class PlannedStage:
    """One stage of one branch (stages before a fan-out are shared by the branches after it)."""

    spec: StageSpec
    kind: StageKind
    values: dict[str, Any]  # this branch's keys (one value per fan-out key)
    options: Any  # the config built from them
    folder: str  # NN-kind[+key=value...]: every fan-out choice of the branch so far
    choices: tuple[tuple[str, Any], ...]  # the branch's fan-out choices up to and including this stage
    input: PlannedStage | None  # the stage whose checkpoint this one receives (None: `from:` or nothing)
    hash: str = ""
    state_before: ModelState = field(default_factory=ModelState)
    left_out: tuple[str, ...] = ()  # shared keys this branch's choices do not read (not in `values`)

    @property
    def label(self) -> str:
        return f"{self.folder} ({self.spec.label()})"


@dataclass
class Plan:
    recipe: Recipe
    branches: list[list[PlannedStage]]
    source_hash: str | None = None

    @property
    def stages(self) -> list[PlannedStage]:
        """Every distinct planned stage, in running order (branch by branch, shared stages once)."""
        seen: dict[int, PlannedStage] = {}
        for branch in self.branches:
            for stage in branch:
                seen.setdefault(id(stage), stage)
        return list(seen.values())

    def directory(self, stage: PlannedStage) -> Path:
        return self.recipe.directory / stage.folder

    def input_checkpoint(self, stage: PlannedStage) -> Path | None:
        """The checkpoint `stage` receives: its input stage's best.safetensors, or the recipe's `from:`;
        for a stage given its own value of a key it would fill from its input (a distill stage's
        `teacher:`), that checkpoint (the first teacher): recorded in stage.json, hashed for reruns."""
        for key in FILLED_FROM_INPUT.get(stage.spec.kind, ()):
            value = getattr(stage.options, key, None) if stage.values.get(key) else None
            if value:
                return Path(value[0] if isinstance(value, list) else value)
        if stage.input is not None:
            return self.directory(stage.input) / "best.safetensors"
        return Path(self.recipe.source) if self.recipe.source else None


def value_text(value: Any) -> str:
    """A recipe value as its YAML author wrote it (null, true, [a,b]), not as Python prints it."""
    return json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else value


def keys_text(pairs: Any, empty: str) -> str:
    """`key=value, ...` for (key, value) pairs (a branch's choices, a stage's keys); `empty` when none."""
    return ", ".join(f"{key}={value_text(value)}" for key, value in pairs) or empty


def _format(value: Any) -> str:
    return value_text(value).replace("/", "_").replace(" ", "")


def _fail(recipe: Recipe, spec: StageSpec, message: str, key: str | None = None,
          alternative: int | None = None) -> EffdlError:
    return EffdlError(f"{recipe.where(spec, key, alternative)}: {spec.label()}: {message}")


def _kind(recipe: Recipe, spec: StageSpec) -> StageKind:
    if spec.kind not in STAGES:
        error = unknown_name_error("stage kind", spec.kind, STAGES)
        raise EffdlError(f"{recipe.where(spec)}: stage {spec.index}: {error}")
    return STAGES[spec.kind]


class Variant(NamedTuple):
    """One branch of a stage as written: its fan-out choices, its keys, and which alternative of
    the list form it comes from (None for the mapping form)."""

    choices: tuple[tuple[str, Any], ...]
    values: dict[str, Any]
    alternative: int | None


def _variants(recipe: Recipe, spec: StageSpec, kind: StageKind) -> list[Variant]:
    """The stage's branches: one per alternative of the list form (the mapping form is one
    alternative) and combination of its listed values. An alternative's choices, which name its
    folders, are its keys whose values differ between the alternatives, then its fan-out keys."""
    try:
        cls = kind.config_class()
    except ImportError as exc:  # a kind whose module this installation lacks
        raise _fail(recipe, spec, f"this effdl cannot run {spec.kind} stages ({exc})") from None
    annotations = field_annotations(cls)
    alternatives = spec.mappings()
    for key in {k for values in alternatives for k in values}:
        if key in kind.set_by_runner:
            raise _fail(recipe, spec, f"'{key}' is set by the runner (each stage writes to "
                        f"{recipe.directory}/NN-{spec.kind}/); remove it", key)
    differing = {k for values in alternatives for k in values
                 if any(k not in other or other[k] != values[k] for other in alternatives)}
    variants = []
    for index, values in enumerate(alternatives):
        alternative = index if spec.alternatives else None
        fanned = []
        for key, value in values.items():
            if not isinstance(value, list):
                continue
            nested = bool(value) and all(isinstance(v, list) for v in value)
            if key not in annotations or (accepts_list(annotations[key]) and not nested):
                # unknown keys are refused, with close names, when the options are built (stages.build_options)
                continue  # one list value for a list field
            if not value:
                raise _fail(recipe, spec, f"'{key}' lists no value to branch on", key, alternative)
            fanned.append(key)
        chosen = tuple((k, v) for k, v in values.items() if k in differing and k not in fanned)
        for combo in itertools.product(*(values[k] for k in fanned)):
            variants.append(Variant(chosen + tuple(zip(fanned, combo)), {**values, **dict(zip(fanned, combo))},
                                    alternative))
    return variants


def _options(recipe: Recipe, spec: StageSpec, kind: StageKind, variant: Variant,
             droppable: bool) -> tuple[Any, dict[str, Any], dict[str, str]]:
    """The config of one branch, built from its values: (options, the values kept, {key left out:
    why}). With `droppable` (a fan-out or a sweep trial), a key shared by the branches that this
    branch's choices leave unread (UnreadOptionError: `act_bits` where the choice is ptq-int8, `lr`
    where it is `epochs: 0`) is left out of this branch; anything else is refused."""
    values, left_out = dict(variant.values), {}
    chosen = {k for k, _ in variant.choices} | set(spec.swept)
    while True:
        plan_values = dict(values)
        for key in FILLED_FROM_INPUT.get(spec.kind, ()):
            plan_values.setdefault(key, ["<the input checkpoint>"])
        try:
            return build_options(kind.config_class(), plan_values), values, left_out
        except UnreadOptionError as exc:
            if not (droppable and exc.name in values and exc.name not in chosen):
                raise _fail(recipe, spec, str(exc) + _in_branch(variant), exc.name if exc.name in values else None,
                            variant.alternative) from None
            left_out[exc.name] = str(exc)
            del values[exc.name]
        except EffdlError as exc:
            text = str(exc)
            key = next((k for k in values if text.startswith(f"{k}:") or f"'{k}'" in text
                        or f"--{k.replace('_', '-')}" in text), None)
            raise _fail(recipe, spec, text + _in_branch(variant), key, variant.alternative) from None


def _in_branch(variant: Variant) -> str:
    """' (in the branch ...)' where the stage branches: which of its branches an error is about."""
    described = _describe(variant)
    return f" (in the branch {described})" if described else ""


def _folder(spec: StageSpec, choices: tuple[tuple[str, Any], ...]) -> str:
    """NN-kind, then every fan-out choice that made its input and its own (short-hashed when long)."""
    base = f"{spec.index:02d}-{spec.kind}"
    folder = base + "".join(f"+{k}={_format(v)}" for k, v in choices)
    if len(folder) > MAX_FOLDER_NAME:
        digest = hashlib.sha256(json.dumps(choices, default=str).encode()).hexdigest()[:12]
        folder = f"{base}+{digest}"
    return folder


def hashed_options(options: Any) -> dict[str, Any]:
    """What of a stage's config its hash covers: the keys set away from their defaults (so a key
    that a newer effdl adds, with a default, does not rerun finished stages), less presentation
    keys (turning a progress bar off does not retrain a chain)."""
    return {k: v for k, v in options_data(options, changed_only=True).items() if k not in PRESENTATION_KEYS}


def _stage_hash(kind: str, options: Any, input_hash: str | None) -> str:
    data = hashed_options(options)
    text = json.dumps({"format": PLAN_FORMAT, "kind": kind, "options": data, "input": input_hash}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _refuse_repeated(recipe: Recipe, spec: StageSpec, built: list) -> None:
    """Branches whose values give the same config twice (0.5 and 0.50) would run it twice."""
    seen: dict[str, Variant] = {}
    for variant, options, *_ in built:
        key = json.dumps(options_data(options), sort_keys=True, default=str)
        if key in seen:
            first, again = (_describe(v) for v in (seen[key], variant))
            where = variant.choices[0][0] if variant.choices else None
            raise _fail(recipe, spec, f"two branches give the same config ({first} and {again}); list each once",
                        where, variant.alternative)
        seen[key] = variant


def _describe(variant: Variant) -> str:
    """A branch in words: its choices, or its alternative's number."""
    choices = ", ".join(f"{k}={v!r}" for k, v in variant.choices)
    if variant.alternative is None:
        return choices
    return f"alternative {variant.alternative + 1}" + (f" ({choices})" if choices else "")


def make_plan(recipe: Recipe) -> Plan:
    """Validate `recipe` and expand it into branches of hashed stages (see the module docstring).

    Raises EffdlError naming FILE:LINE, the stage and the key for anything it refuses; a missing
    or unreadable `from:` checkpoint is refused too. Nothing is written.
    """
    from effdl.recipes.report import report_options

    try:
        report_options(recipe.report)
    except EffdlError as exc:
        raise EffdlError(f"{recipe.where(key='report')}: report: {exc}") from None
    state = ModelState()
    source_hash = None
    if recipe.source:
        from effdl.checkpoint import read_checkpoint_meta

        where = recipe.where(key="from")
        if not Path(recipe.source).is_file():
            inside = Path(recipe.source) / "best.safetensors"
            hint = f" (a run folder: did you mean {inside}?)" if inside.is_file() else ""
            raise EffdlError(f"{where}: no checkpoint {recipe.source}{hint}")
        try:
            state = state_of_checkpoint(read_checkpoint_meta(recipe.source), recipe.source)
        except EffdlError as exc:
            raise EffdlError(f"{where}: {exc}") from None
        source_hash = file_hash(recipe.source)
    # Each branch: its stages so far, its choices, the model state it hands on, its last checkpoint
    # stage, and the choices that made that checkpoint (what names the folders after it).
    branches: list[tuple[list[PlannedStage], tuple, ModelState, PlannedStage | None, tuple]] = [
        ([], (), state, None, ())]
    planned: dict[str, PlannedStage] = {}  # folder -> stage: branches that differ only in a measuring
    for spec in recipe.stages:            # stage's choice share what follows it
        kind = _kind(recipe, spec)
        variants = _variants(recipe, spec, kind)
        # a sweep trial varies its keys like a fan-out, whatever the stage's form
        droppable = bool(spec.swept) or (not spec.alternatives and len(variants) > 1)
        built = [(variant, *_options(recipe, spec, kind, variant, droppable)) for variant in variants]
        unread_everywhere = [k for k in variants[0].values if all(k in left_out for *_, left_out in built)]
        if unread_everywhere and not spec.swept:  # no branch reads it: the key would change nothing
            key = unread_everywhere[0]
            raise _fail(recipe, spec, f"{built[0][3][key]}; no branch of the stage reads {key}", key)
        _refuse_repeated(recipe, spec, built)
        grown = []
        for stages, choices_so_far, state, producer, input_choices in branches:
            if kind.takes_checkpoint and not state.exists:
                raise _fail(recipe, spec, f"{spec.kind} needs a model: start the recipe with a train stage, "
                            "or give one with 'from: CHECKPOINT' in the recipe or `effdl run RECIPE --from CHECKPOINT`")
            for (choices, _, _), options, values, left_out in built:
                try:
                    if kind.check is not None:
                        kind.check(state, options)
                    after = kind.after(state, options) if kind.after is not None else state
                except EffdlError as exc:
                    raise _fail(recipe, spec, str(exc)) from None
                if after != state:
                    after = replace(after, made_by=spec.label())
                folder = _folder(spec, input_choices + choices)
                stage = planned.get(folder)
                if stage is None:
                    stage = PlannedStage(spec, kind, values, options, folder, input_choices + choices, producer,
                                         state_before=state, left_out=tuple(left_out))
                    stage.hash = _stage_hash(spec.kind, options, producer.hash if producer else source_hash)
                    planned[folder] = stage
                made = kind.makes_checkpoint
                grown.append(([*stages, stage], choices_so_far + choices, after, stage if made else producer,
                              input_choices + choices if made else input_choices))
        branches = grown
    return Plan(recipe, [stages for stages, *_ in branches], source_hash)
