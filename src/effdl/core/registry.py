"""A named registry: one name, one entry, registered by a decorator (timm's registry idea).

    CRITERIA = Registry("pruning criterion")

    @CRITERIA.register("l1")
    def l1_importance(...): ...

Registering a second, different entry under a taken name is an error (the same entry again, e.g.
when a module is re-imported, is fine), so two techniques can never silently shadow each other.
A Registry is a dict: look entries up, list them and suggest close names as with any mapping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from effdl.errors import EffdlError

T = TypeVar("T")


class Registry(dict):
    """name -> entry (a class or a function), filled by `register(name)`."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what  # what an entry is, for error messages ("pruning criterion", ...)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering its class or function as entry `name`; returns it unchanged."""

        def wrap(entry: T) -> T:
            existing: Any = self.get(name)
            if existing is not None and existing.__qualname__ != getattr(entry, "__qualname__", None):
                raise EffdlError(f"{self.what} '{name}' is already {existing.__module__}.{existing.__qualname__}")
            self[name] = entry
            return entry

        return wrap
