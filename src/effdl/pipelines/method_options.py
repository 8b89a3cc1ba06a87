"""Options the chosen method does not read are refused, not ignored: the compression commands' check.

An options dataclass (QuantizeOptions, PruneOptions, FactorizeOptions) holds every method's
options; one that the chosen method never reads, set away from its default, would change nothing
without a word (`effdl quantize --method ptq-int8 --act-bits 4` quantized activations to 8 bits
all the same). Each pipeline names, per option, the methods whose code reads it (its `READ_BY`),
and `refuse_unread_options` turns a stray one into one UnreadOptionError line (a recipe fan-out
branch drops such a key instead, where another branch reads it). Light on purpose: no torch
at import (the command-line checks run before any heavy import).
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

from effdl.errors import UnreadOptionError


def option_defaults(options: Any) -> dict[str, Any]:
    """{field name: default} of the options dataclass `options` (factories called)."""
    return {f.name: f.default if f.default_factory is MISSING else f.default_factory() for f in fields(options)}


def is_set(options: Any, name: str) -> bool:
    """Whether field `name` of `options` is away from its default (what the user asked for)."""
    return getattr(options, name) != option_defaults(options)[name]


def option_flag(name: str, flags: dict[str, str] | None = None) -> str:
    """The command-line flag of field `name`: `flags[name]` where the flag is spelled otherwise
    (overrides -> --override), else --name-with-dashes."""
    return (flags or {}).get(name) or "--" + name.replace("_", "-")


def refuse_unread_options(
    options: Any, read_by: dict[str, tuple[str, ...]], method: str, *, method_flag: str = "--method",
    flags: dict[str, str] | None = None,
) -> None:
    """Raise EffdlError for the first option of `read_by` ({field: methods whose code reads it})
    that is away from its default while `method` is not among its readers. The message names the
    flag and the field (recipes spell options as fields): "--act-bits (act_bits) is an option of
    --method qat; --method ptq-int8 does not use it"."""
    defaults = option_defaults(options)
    for name, readers in read_by.items():
        if method not in readers and getattr(options, name) != defaults[name]:
            raise UnreadOptionError(f"{option_flag(name, flags)} ({name}) is an option of {method_flag} "
                                    f"{', '.join(readers)}; {method_flag} {method} does not use it", name)


# The fine-tune's own settings, in every compression command's options (bf16 only in some): with
# no fine-tune they would change nothing (`effdl prune ... --lr 0.001` without --epochs).
FINETUNE_SETTINGS = ("lr", "batch_size", "compile", "bf16")


def check_finetune_options(options: Any, *, fine_tunes: bool, epochs_hint: str = "--epochs") -> None:
    """The fine-tune options of a compression command, each one read: the fine-tune's settings
    (--lr, --batch-size, --compile, --bf16) and --distill only when the method fine-tunes
    (`fine_tunes`); the distillation options valid (effdl.compress.distill.check_distill_options),
    --distill-temperature and --distill-method only with a --distill weight, and the temperature
    only by the methods whose config has one (kd, kd-std, dkd: the feature methods have none).
    EffdlError otherwise."""
    from effdl.compress.distill import check_distill_options
    from effdl.compress.distill.methods import method_configs

    check_distill_options(options.distill, options.distill_temperature, options.distill_method)
    if not fine_tunes:
        for name in FINETUNE_SETTINGS:
            if hasattr(options, name) and is_set(options, name):
                raise UnreadOptionError(f"{option_flag(name)} ({name}) is a setting of the fine-tune; without "
                                        f"{epochs_hint} there is none", name)
    if options.distill and not fine_tunes:
        raise UnreadOptionError(f"--distill acts during fine-tuning: give {epochs_hint} too", "distill")
    if not options.distill:
        for name in ("distill_temperature", "distill_method"):
            if is_set(options, name):
                raise UnreadOptionError(f"{option_flag(name)} ({name}) shapes the --distill term; without "
                                        "--distill WEIGHT (> 0) nothing uses it", name)
        return
    with_temperature = tuple(name for name, cls in method_configs().items()
                             if "temperature" in {f.name for f in fields(cls)})
    refuse_unread_options(options, {"distill_temperature": with_temperature}, options.distill_method,
                          method_flag="--distill-method")
