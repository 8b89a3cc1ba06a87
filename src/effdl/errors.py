"""User-facing errors: anything raised as EffdlError is shown by the CLI as one clear line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EffdlError(Exception):
    """An error caused by user input (bad name, missing file, malformed config...)."""


class UnreadOptionError(EffdlError):
    """An option set away from its default that nothing reads under the other options (a method
    that has no such setting, no fine-tune for a fine-tune setting). Refused where one run is asked
    for; a recipe branch whose fan-out choice leaves a shared key unread drops it instead
    (effdl.recipes.plan). `name` is the option's field name."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name


def unknown_name_error(kind: str, name: str, known: Iterable[str]) -> EffdlError:
    """An EffdlError for an unknown `name`, suggesting the closest `known` names."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known[:40])}"
    return EffdlError(f"unknown {kind} '{name}'{hint}")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, after the work so far was saved; the message says how to continue.

    A KeyboardInterrupt (not an EffdlError), so the CLI reports it as an interruption (exit 130)
    and code that catches KeyboardInterrupt still sees it as one.
    """
