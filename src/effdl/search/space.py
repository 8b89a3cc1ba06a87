"""Sweep parameters: what one key may take (a list, a range, a log-uniform range), its grid, and
how an optuna trial samples it.

Accepted forms of a value (YAML or `--param KEY=VALUE` on the command line):
    [0.05, 0.1, 0.2]        categorical: exactly these values
    0.01..0.3               a float range, uniform
    1e-4..1e-2              the same; the keys lr and weight_decay default to log-uniform
    log:1e-4..1e-1          log-uniform, whatever the key
    2..8                    an integer range (both ends integers), step 1
    {low: 16, high: 64, step: 16}   the mapping form (also `log: true`, `choices: [...]`)
    a scalar                fixed (not searched)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import yaml

from effdl.errors import EffdlError

LOG_BY_DEFAULT = ("lr", "weight_decay")  # keys whose ranges are log-uniform unless told otherwise


@dataclass(frozen=True)
class Param:
    """One searched key: categorical `choices`, or an int/float range [low, high]."""

    name: str
    kind: str  # "categorical", "int" or "float"
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def grid(self) -> list[Any]:
        """Every value a grid search tries. Raises EffdlError for a continuous range without a step."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            step = int(self.step or 1)
            return list(range(int(self.low), int(self.high) + 1, step))
        if self.step is None:
            raise EffdlError(f"parameter '{self.name}': a grid needs a list or a range with a step, "
                             f"got the continuous range {self.low}..{self.high}")
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]

    def suggest(self, trial: Any) -> Any:
        """The value an optuna trial samples for this key."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def distribution(self) -> Any:
        """The optuna distribution of this key (for asking a trial with fixed distributions)."""
        import optuna.distributions as d

        if self.kind == "categorical":
            return d.CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return d.IntDistribution(int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return d.FloatDistribution(self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{self.name} in {list(self.choices)}"
        return f"{self.name} in {self.low}..{self.high}" + (" (log)" if self.log else "") + (
            f" step {self.step}" if self.step else "")


def _number(text: str, name: str) -> int | float:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(text)  # YAML 1.1 reads 1e-4 as a string
        except ValueError:
            raise EffdlError(f"parameter '{name}': range end {text!r} is not a number") from None
    return value


def _range(name: str, low: Any, high: Any, log: bool | None, step: Any) -> Param:
    for end in (low, high):
        if isinstance(end, bool) or not isinstance(end, (int, float)):
            raise EffdlError(f"parameter '{name}': range ends must be numbers, got {end!r}")
    if low > high:
        raise EffdlError(f"parameter '{name}': empty range {low}..{high} (low > high)")
    leaf = name.rsplit(".", 1)[-1]
    log = (leaf in LOG_BY_DEFAULT and low > 0 and step is None) if log is None else bool(log)
    if log and low <= 0:
        raise EffdlError(f"parameter '{name}': a log-uniform range needs low > 0, got {low}")
    if log and step is not None:
        raise EffdlError(f"parameter '{name}': a range is either log-uniform or stepped, not both")
    is_int = isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int))
    return Param(name, "int" if is_int else "float", low=low if is_int else float(low),
                 high=high if is_int else float(high), log=log, step=step)


def parse_param(name: str, value: Any) -> Param | None:
    """The Param `value` describes for key `name` (module docstring), or None for a fixed scalar.

    Raises EffdlError for an empty list, an empty or malformed range, or an unknown mapping key.
    """
    if isinstance(value, (list, tuple)):
        if not value:
            raise EffdlError(f"parameter '{name}': an empty list of values; give at least one")
        return Param(name, "categorical", choices=tuple(value))
    if isinstance(value, dict):
        unknown = set(value) - {"low", "high", "log", "step", "choices"}
        if unknown:
            raise EffdlError(f"parameter '{name}': unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                             "a range has low, high, log, step (or choices)")
        if "choices" in value:
            return parse_param(name, list(value["choices"] or []))
        if "low" not in value or "high" not in value:
            raise EffdlError(f"parameter '{name}': a range needs both low and high")
        return _range(name, value["low"], value["high"], value.get("log"), value.get("step"))
    if isinstance(value, str) and ".." in value:
        text, log = value.strip(), None
        if text.startswith("log:"):
            text, log = text[4:], True
        low_text, _, high_text = text.partition("..")
        return _range(name, _number(low_text.strip(), name), _number(high_text.strip(), name), log, None)
    return None


def parse_space(values: dict[str, Any]) -> tuple[list[Param], dict[str, Any]]:
    """Split a mapping of key -> value into searched Params and fixed values.

    Raises EffdlError when nothing is searched (an empty space)."""
    params, fixed = [], {}
    for name, value in values.items():
        param = parse_param(str(name), value)
        if param is None:
            fixed[str(name)] = value
        else:
            params.append(param)
    return params, fixed


def grid_size(params: list[Param]) -> int:
    return math.prod(len(p.grid()) for p in params)


def parse_assignment(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` from the command line, VALUE read as YAML ('[0.1, 0.2]', '1e-4..1e-2', '3')."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise EffdlError(f"a parameter is KEY=VALUES, such as lr=1e-3..1e-1 or batch_size=[64,128]; got {text!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise EffdlError(f"parameter {key}: {raw!r} is not a valid value (a YAML list, range or scalar)") from None
    return key.strip(), value
