"""Reading a recipe file: YAML whose every key keeps its line, so that errors can point at it.

A recipe is an ordered list of stages; each stage is a one-key mapping from the stage's kind to its
keys, the fields of the config class the Python API and the CLI use for that kind
(effdl.recipes.stages):

    name: long-project          # default: the file's name without .yaml
    out: runs                   # the stages go to <out>/<name>/<NN-stage>/ (default: runs)
    from: runs/base/best.safetensors   # optional: the checkpoint the first stage takes
    stages:
      - train: {model: resnet20, dataset: cifar10, epochs: 15}
      - prune: {method: l1-filter, target_macs: [0.7, 0.5], epochs: 4}   # a list fans out
      - quantize: [{method: ptq-int8}, {method: qat, bits: 4, epochs: 4}]  # alternatives, each with its keys
      - export: {int8: true}
    report: {latency: true}     # the final report's options (effdl.recipes.runner.ReportOptions)

This module only reads and locates: which stage kinds and keys exist is the stages module's
business, what may follow what the plan's (effdl.recipes.plan).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from effdl.errors import EffdlError

TOP_LEVEL_KEYS = ("name", "out", "from", "stages", "report")


@dataclass
class StageSpec:
    """One stage as written: its kind, its keys and where each of them is in the file."""

    index: int  # 1-based position in the recipe
    kind: str
    values: dict[str, Any]  # the keys of the mapping form ({} with alternatives)
    line: int  # 1-based line of the stage's kind
    key_lines: dict[str, int] = field(default_factory=dict)  # key -> 1-based line (mapping form)
    # The list form `- quantize: [{method: ptq-int8}, {method: qat, act_bits: 4}]`: branches that
    # differ in more than one key's value, each alternative with keys of its own (and their lines).
    alternatives: list[dict[str, Any]] = field(default_factory=list)
    alternative_lines: list[dict[str, int]] = field(default_factory=list)
    swept: tuple[str, ...] = ()  # keys a sweep trial set (effdl.search.sweep): they vary like fan-out keys

    def label(self) -> str:
        return f"stage {self.index} ({self.kind})"

    def mappings(self) -> list[dict[str, Any]]:
        """Its keys, one mapping per alternative (the mapping form is one): where to read or set a key."""
        return self.alternatives or [self.values]


@dataclass
class Recipe:
    """A parsed recipe (see the module docstring)."""

    name: str
    stages: list[StageSpec]
    out: str = "runs"
    source: str | None = None  # `from:`: the checkpoint the first stage takes
    report: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # the file it was read from (None: built in code)
    key_lines: dict[str, int] = field(default_factory=dict)  # top-level key -> line

    @property
    def directory(self) -> Path:
        """Where its stages are written: <out>/<name>."""
        return Path(self.out) / self.name

    def where(self, stage: StageSpec | None = None, key: str | None = None, alternative: int | None = None) -> str:
        """'FILE:LINE' of a stage's key (of the 0-based `alternative` of its list form; or of the
        stage, or of a top-level key), for error messages."""
        file = str(self.path) if self.path is not None else "<recipe>"
        if stage is None:
            line = self.key_lines.get(key or "", 0)
        else:
            lines = stage.alternative_lines[alternative] if alternative is not None else stage.key_lines
            line = lines.get(key, stage.line) if key is not None else stage.line
        return f"{file}:{line}" if line else file


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _keys(node: yaml.Node, file: str = "<recipe>") -> dict[str, int]:
    """The lines of a mapping node's keys (nothing for other nodes). A key given twice is refused:
    YAML would silently keep the last value."""
    if not isinstance(node, yaml.MappingNode):
        return {}
    lines: dict[str, int] = {}
    for key, _ in node.value:
        name = str(key.value)
        if name in lines:
            raise EffdlError(f"{file}:{_line(key)}: '{name}' is given twice (first on line {lines[name]})")
        lines[name] = _line(key)
    return lines


def check_name(name: object, where: str) -> str:
    """A recipe name is one folder name: no path separator, not empty, not '.' or '..'."""
    if not isinstance(name, str) or not name.strip() or "/" in name or "\\" in name or name in (".", ".."):
        raise EffdlError(f"{where}: the recipe's name must be a folder name, got {name!r}")
    return name


def recipe_from_text(text: str, *, path: Path | None = None, default_name: str = "recipe") -> Recipe:
    """Parse a recipe from YAML `text` (`path` only names it in errors).

    Raises EffdlError, with FILE:LINE, for malformed YAML, a top level that is not a mapping, an
    unknown top-level key, a missing or empty `stages` list, a stage that is not a one-key mapping
    from a kind to a mapping of keys, or a name that cannot be a folder name.
    """
    file = str(path) if path is not None else "<recipe>"
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark is not None else file
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise EffdlError(f"{where}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise EffdlError(f"{file}: a recipe is a YAML mapping with a 'stages' list, got {type(data).__name__}")
    top_lines = _keys(node, file)
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise EffdlError(f"{file}:{top_lines.get(str(key), 0)}: unknown recipe key '{key}'; "
                             f"a recipe has: {', '.join(TOP_LEVEL_KEYS)}")
    stages_node = next((v for k, v in node.value if k.value == "stages"), None)
    raw = data.get("stages")
    if not isinstance(raw, list) or not raw:
        raise EffdlError(f"{file}:{top_lines.get('stages', 1)}: 'stages' must be a non-empty list of stages "
                         "such as '- train: {model: resnet20}'")
    stages = []
    for i, (item, item_node) in enumerate(zip(raw, stages_node.value), start=1):
        line = _line(item_node)
        if isinstance(item, str):  # "- bench": a stage with no keys
            item = {item: None}
            item_node = None
        if not isinstance(item, dict) or len(item) != 1:
            raise EffdlError(f"{file}:{line}: stage {i} must be one kind with its keys, such as "
                             "'- prune: {method: l1-filter, sparsity: 0.5}'")
        kind, values = next(iter(item.items()))
        values = {} if values is None else values
        value_node = item_node.value[0][1] if item_node is not None else None
        if isinstance(values, list):
            stages.append(_alternatives(file, i, str(kind), values, value_node, line))
            continue
        if not isinstance(values, dict):
            raise EffdlError(f"{file}:{line}: the keys of stage {i} ({kind}) must be a mapping (or a list of "
                             f"mappings, one per branch), got {values!r:.60}")
        stages.append(StageSpec(i, str(kind), {str(k): v for k, v in values.items()}, line,
                                _keys(value_node, file) if value_node is not None else {}))
    name = check_name(data.get("name", default_name), f"{file}:{top_lines.get('name', 1)}")
    out = data.get("out", "runs")
    source = data.get("from")
    report = data.get("report") or {}
    for key, value, kind in (("out", out, str), ("from", source, (str, type(None))), ("report", report, dict)):
        if not isinstance(value, kind):
            what = "a mapping such as '{latency: true}'" if key == "report" else "a path"
            raise EffdlError(f"{file}:{top_lines.get(key, 1)}: '{key}' must be {what}, got {value!r:.60}")
    return Recipe(name=name, stages=stages, out=out, source=source, report=report, path=path, key_lines=top_lines)


def _alternatives(file: str, index: int, kind: str, values: list, node: yaml.Node, line: int) -> StageSpec:
    """The list form of a stage: one or more mappings, each one branch's keys."""
    if not values or not all(isinstance(v, dict) for v in values):
        raise EffdlError(f"{file}:{line}: a list after '{kind}:' gives the stage's alternatives, one mapping of keys "
                         f"per branch, such as '- {kind}: [{{...}}, {{...}}]'; got {values!r:.60}")
    alternatives = [{str(k): v for k, v in alternative.items()} for alternative in values]
    return StageSpec(index, kind, {}, line, alternatives=alternatives,
                     alternative_lines=[_keys(alternative_node, file) for alternative_node in node.value])


def load_recipe(path: str | Path) -> Recipe:
    """Read the recipe file at `path` (a shipped recipe's name works too: `effdl run long-project`).

    Raises EffdlError if neither a file nor a shipped recipe of that name exists, or the file is
    not a valid recipe (see `recipe_from_text`).
    """
    path = Path(path)
    if not path.is_file():
        shipped = shipped_recipes()
        if str(path) in shipped:
            path = shipped[str(path)]
        else:
            from effdl.errors import unknown_name_error

            if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
                raise EffdlError(f"no recipe file {path}; shipped recipes: {', '.join(sorted(shipped))}")
            raise unknown_name_error("recipe (neither a file nor a shipped recipe)", str(path), shipped)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise EffdlError(f"cannot read recipe {path}: {exc}") from None
    return recipe_from_text(text, path=path, default_name=path.stem)


SHIPPED_DIR = Path(__file__).with_name("shipped")


def shipped_recipes() -> dict[str, Path]:
    """The recipes shipped with effdl (the repository's recipes/ folder), by name."""
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.yaml"))}
