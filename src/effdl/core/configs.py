"""Technique configs as versioned data, and one handler per config type.

A technique is a frozen dataclass registered under a stable name and a version:

    @technique_config("quantize.fake_quant", version=1)
    @dataclass(frozen=True)
    class FakeQuantConfig: ...

    config_to_dict(FakeQuantConfig(weight_bits=4))
    # {"type": "quantize.fake_quant", "version": 1, "weight_bits": 4, ...}
    config_from_dict(that_dict) == FakeQuantConfig(weight_bits=4)

The part of the name before the first dot is the config's *family* ("quantize", "prune"). A family
has one verb, which dispatches on the config's type to the handler registered for it:

    @register_handler(FakeQuantConfig)
    def _fake_quant(model, config, filter_fn=None): ...

    def quantize_(model, config, filter_fn=None):
        return dispatch("quantize", config, model, filter_fn)

so adding a method is one config class and one handler, and touches no table and no other method
(the torchao `quantize_(model, config)` design). Checkpoints store `config_to_dict(config)`, which
is plain JSON, never `repr()`. A config written by an older version is read through the class's
optional `upgrade(fields, version) -> fields` static method; one written by a newer effdl, of an
unknown type or with an unknown field is refused with an EffdlError naming it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from effdl.errors import EffdlError, unknown_name_error

C = TypeVar("C", bound=type)
Handler = Callable[..., Any]

_CONFIGS: dict[str, type] = {}  # registered name -> config class
_HANDLERS: dict[str, dict[type, Handler]] = {}  # family -> config class -> handler


def family_of(name: str) -> str:
    """The family of a registered config name: the part before the first dot."""
    return name.partition(".")[0]


def technique_config(name: str, version: int = 1) -> Callable[[C], C]:
    """Register a dataclass as the config of technique `name` ("family.method"), at `version`.

    The class gains `config_name` and `config_version` class attributes. Raises EffdlError if
    the class is not a dataclass, the name has no family, the version is not an int >= 1, or
    another class already took the name.
    """
    if not isinstance(name, str) or "." not in name or not all(name.split(".")):
        raise EffdlError(f"a technique config name is 'family.method', got {name!r}")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise EffdlError(f"a technique config version is an integer >= 1, got {version!r}")

    def wrap(cls: C) -> C:
        if not dataclasses.is_dataclass(cls):
            raise EffdlError(f"{cls.__name__}: a technique config must be a dataclass")
        existing = _CONFIGS.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise EffdlError(f"technique config '{name}' is already {existing.__module__}.{existing.__qualname__}")
        cls.config_name = name
        cls.config_version = version
        _CONFIGS[name] = cls
        return cls

    return wrap


def registered_configs(family: str | None = None) -> dict[str, type]:
    """The registered config classes by name, of one family or of all (a copy)."""
    return {n: c for n, c in _CONFIGS.items() if family is None or family_of(n) == family}


def _name_of(config_type: type) -> str:
    name = config_type.__dict__.get("config_name")
    if name is None or _CONFIGS.get(name) is not config_type:
        raise EffdlError(f"{config_type.__name__} is not a registered technique config (decorate it with "
                         "@technique_config)")
    return name


def _plain(value: Any, where: str) -> Any:
    """`value` as JSON data: tuples become lists; anything JSON cannot hold is refused."""
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v, where) for k, v in value.items()}
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise EffdlError(f"config field {where} holds {value!r:.80}, which cannot be stored as data") from None
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """`{"type": name, "version": v, **fields}`: the config as JSON-serialisable data (tuples as lists).

    Raises EffdlError if `config` is not an instance of a registered config, or a field holds
    something JSON cannot store.
    """
    name = _name_of(type(config))
    fields = {f.name: _plain(getattr(config, f.name), f"{name}.{f.name}")
              for f in dataclasses.fields(config) if f.init}
    return {"type": name, "version": type(config).config_version, **fields}


def config_from_dict(data: Mapping[str, Any]) -> Any:
    """The config that `config_to_dict` turned into `data`, validated by its own constructor.

    A missing version reads as 1. Older versions go through the class's `upgrade(fields, version)`
    static method when it has one. Raises EffdlError for a non-mapping, an unknown type, a version
    newer than this effdl knows (or older with no upgrade), an unknown field (named), or values the
    config refuses.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("type"), str):
        raise EffdlError(f"a stored technique config is a mapping with a 'type', got {data!r:.120}")
    name = data["type"]
    cls = _CONFIGS.get(name)
    if cls is None:
        raise unknown_name_error("technique config type", name, _CONFIGS)
    version = data.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise EffdlError(f"technique config '{name}' has an invalid version {version!r}")
    fields = {k: v for k, v in data.items() if k not in ("type", "version")}
    if version > cls.config_version:
        raise EffdlError(f"technique config '{name}' version {version} was written by a newer effdl "
                         f"(this one reads up to version {cls.config_version}); upgrade effdl")
    if version < cls.config_version:
        upgrade = getattr(cls, "upgrade", None)
        if upgrade is None:
            raise EffdlError(f"technique config '{name}' version {version} cannot be read by this effdl "
                             f"(version {cls.config_version}, no upgrade from {version})")
        fields = upgrade(dict(fields), version)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise EffdlError(f"technique config '{name}' has no field '{unknown[0]}'; "
                         f"its fields: {', '.join(sorted(known)) or '(none)'}")
    try:
        return cls(**fields)
    except TypeError as exc:  # a wrong value type deep in a constructor
        raise EffdlError(f"technique config '{name}': {exc}") from None


def register_handler(config_type: type) -> Callable[[Handler], Handler]:
    """Register `fn(config, *args, **kwargs)` as what its family's verb does with `config_type`.

    Raises EffdlError if `config_type` is not a registered config, or another function already
    handles it (a second registration from the same module and name replaces the first, so a
    module can be reloaded).
    """
    name = _name_of(config_type)

    def wrap(fn: Handler) -> Handler:
        handlers = _HANDLERS.setdefault(family_of(name), {})
        existing = handlers.get(config_type)
        if existing is not None and (existing.__module__, existing.__qualname__) != (fn.__module__, fn.__qualname__):
            raise EffdlError(f"technique config '{name}' is already handled by "
                             f"{existing.__module__}.{existing.__qualname__}")
        handlers[config_type] = fn
        return fn

    return wrap


def handler_for(family: str, config: Any) -> Handler:
    """The handler of `config` in `family` (its class's, else the nearest base class's).

    Raises EffdlError naming the config when it is not a config of that family.
    """
    handlers = _HANDLERS.get(family, {})
    for cls in type(config).__mro__:
        if cls in handlers:
            return handlers[cls]
    name = type(config).__dict__.get("config_name")
    if name is not None and family_of(name) != family:
        raise EffdlError(f"{type(config).__name__} is a {family_of(name)} config, not a {family} config")
    known = ", ".join(sorted(c.__name__ for c in handlers)) or "(none registered)"
    raise EffdlError(f"{type(config).__name__} is not a {family} config; {family} configs: {known}")


def dispatch(family: str, config: Any, *args: Any, **kwargs: Any) -> Any:
    """Call the handler registered for `config`'s type in `family`: `handler(config, *args, **kwargs)`."""
    return handler_for(family, config)(config, *args, **kwargs)
