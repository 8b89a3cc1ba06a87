"""Which layers a technique or command touches: one `LayerSelection` type for all of them.

Layers are named as in `model.named_modules()` (`layers.1.0.conv1`); patterns are exact names or
shell-style globs matched on the whole name (`layers.1.*`, `*.conv2`, case-sensitive). A selection
may also restrict the module types it considers. With `strict` (the default) every pattern must match
at least one layer (and the types some module), so a typo is an error naming it, never a silent no-op.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from effdl.errors import EffdlError

ModuleType = type[nn.Module] | str


def _close_names(pattern: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.5)
    shown = close or list(names[:12])
    if not shown:
        return ""
    more = "..." if not close and len(names) > 12 else ""
    return f"; {'did you mean' if close else 'layers:'} {', '.join(shown)}{'?' if close else more}"


def match_patterns(
    names: Iterable[str], patterns: Iterable[str], *, strict: bool = True, what: str = "layer"
) -> set[str]:
    """The `names` matching any of `patterns` (exact names or fnmatch globs, case-sensitive).

    With `strict`, a pattern matching no name raises EffdlError
    "layer pattern 'P' matches no <what>; did you mean ...?".
    """
    names = list(names)
    chosen: set[str] = set()
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise EffdlError(f"a layer pattern must be a string, got {pattern!r}")
        hits = {n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)}
        if strict and not hits:
            raise EffdlError(f"layer pattern '{pattern}' matches no {what}{_close_names(pattern, names)}")
        chosen |= hits
    return chosen


def _type_matches(module: nn.Module, wanted: ModuleType) -> bool:
    if isinstance(wanted, str):  # a class name: matches that class and its subclasses, effdl's or torch's
        return any(cls.__name__ == wanted.removeprefix("nn.") for cls in type(module).__mro__)
    return isinstance(module, wanted)


@dataclass(frozen=True)
class LayerSelection:
    """Layers chosen by name patterns and module types.

    include: names or globs of the layers wanted; empty means every candidate.
    exclude: names or globs removed from what `include` chose.
    types: module types a layer must be an instance of (classes, or class names such as "Conv2d",
        which also match subclasses); empty means any module. Candidates are the submodules of
        the model of these types; the model itself (named "") only when `types` are given and it
        is one of them (a bare nn.Linear model).
    strict: every include/exclude pattern must match at least one candidate, and the types at
        least one module, else EffdlError naming the pattern (or the types).
    what: how errors name a candidate ("prunable layer", "quantizable layer"...).
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    types: tuple[ModuleType, ...] = ()
    strict: bool = True
    what: str = "layer"

    def __post_init__(self) -> None:
        for field_name in ("include", "exclude", "types"):
            value = getattr(self, field_name)
            if value is None:
                value = ()
            elif isinstance(value, (str, type)):
                value = (value,)
            object.__setattr__(self, field_name, tuple(value))
        for wanted in self.types:
            if not isinstance(wanted, str) and not (isinstance(wanted, type) and issubclass(wanted, nn.Module)):
                raise EffdlError(f"a layer type must be an nn.Module class or a class name, got {wanted!r}")

    @classmethod
    def of(cls, value: Any, **defaults: Any) -> LayerSelection:
        """A selection from what users write: None (everything), a pattern, a list of patterns,
        a mapping with include/exclude/types/strict keys, or a LayerSelection (returned as is).
        `defaults` fill the fields the value does not set (e.g. `types=`, `what=`)."""
        if isinstance(value, LayerSelection):
            return value
        if value is None:
            return cls(**defaults)
        if isinstance(value, str):
            return cls(include=(value,), **defaults)
        if isinstance(value, Mapping):
            unknown = set(value) - {"include", "exclude", "types", "strict"}
            if unknown:
                raise EffdlError(f"unknown layer selection key(s) {', '.join(sorted(map(str, unknown)))}; "
                                 "use include, exclude, types, strict")
            return cls(**{**defaults, **value})
        if isinstance(value, Iterable):
            return cls(include=tuple(value), **defaults)
        raise EffdlError(f"cannot read a layer selection from {value!r}")

    def candidates(self, model: nn.Module) -> dict[str, nn.Module]:
        """The submodules of the wanted types, by name, in `named_modules()` order."""
        if not self.types:
            return {name: m for name, m in model.named_modules() if name}
        modules = dict(model.named_modules())
        chosen = {name: m for name, m in modules.items() if any(_type_matches(m, t) for t in self.types)}
        if self.strict and not chosen:  # types are a union: a model may lack some of them (no Linear...)
            labels = [t if isinstance(t, str) else t.__name__ for t in self.types]
            raise EffdlError(f"{type(model).__name__} has no {self.what} of type {' or '.join(labels)}")
        return chosen

    def select(self, model: nn.Module) -> dict[str, nn.Module]:
        """The chosen layers of `model` by name, in `named_modules()` order (possibly empty when
        `exclude` removes everything; callers that need a layer say so in their own words).

        Raises EffdlError (with `strict`) naming the first pattern that matches nothing, or the
        types when no module has them.
        """
        layers = self.candidates(model)
        keep = match_patterns(layers, self.include, strict=self.strict, what=self.what) if self.include else set(layers)
        if self.exclude:
            keep -= match_patterns(layers, self.exclude, strict=self.strict, what=self.what)
        return {name: m for name, m in layers.items() if name in keep}

    def names(self, model: nn.Module) -> list[str]:
        """The names `select` chooses, in order."""
        return list(self.select(model))
