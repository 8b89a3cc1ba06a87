"""Technique configs as versioned data (effdl.core.configs) and the one-verb-per-family dispatch.

Every registered quantize / prune config round-trips through a dict; unknown types, fields and
newer versions are refused with their name; `quantize_` and `prune_` dispatch on the config type;
a method registered here, outside effdl, needs no table anywhere.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from effdl import EffdlError
from effdl.core.configs import (
    config_from_dict,
    config_to_dict,
    dispatch,
    register_handler,
    registered_configs,
    technique_config,
)


@technique_config("demo.scale", version=2)
@dataclasses.dataclass(frozen=True)
class ScaleConfig:
    """A toy technique: multiply a number."""

    factor: float = 2.0
    tags: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "tags", tuple(self.tags))
        if self.factor <= 0:
            raise EffdlError(f"factor must be > 0, got {self.factor}")

    @staticmethod
    def upgrade(fields: dict, version: int) -> dict:
        if version == 1:  # version 1 called the factor "k"
            fields["factor"] = fields.pop("k")
        return fields


@register_handler(ScaleConfig)
def _scale(config: ScaleConfig, value: float) -> float:
    return value * config.factor


def test_config_round_trips_through_plain_json_data():
    config = ScaleConfig(3.0, tags=("a", "b"))
    data = config_to_dict(config)
    assert data == {"type": "demo.scale", "version": 2, "factor": 3.0, "tags": ["a", "b"]}
    assert config_from_dict(json.loads(json.dumps(data))) == config


def test_older_versions_are_upgraded_newer_ones_refused():
    assert config_from_dict({"type": "demo.scale", "version": 1, "k": 5.0}) == ScaleConfig(5.0)
    with pytest.raises(EffdlError, match="'demo.scale' version 3 was written by a newer effdl"):
        config_from_dict({"type": "demo.scale", "version": 3, "factor": 1.0})


def test_unknown_type_field_and_bad_values_are_refused_by_name():
    with pytest.raises(EffdlError, match="unknown technique config type 'demo.scael'; did you mean demo.scale"):
        config_from_dict({"type": "demo.scael", "version": 1})
    with pytest.raises(EffdlError, match="'demo.scale' has no field 'facter'"):
        config_from_dict({"type": "demo.scale", "version": 2, "facter": 1.0})
    with pytest.raises(EffdlError, match="factor must be > 0"):
        config_from_dict({"type": "demo.scale", "version": 2, "factor": -1.0})
    with pytest.raises(EffdlError, match="mapping with a 'type'"):
        config_from_dict("ScaleConfig(factor=2.0)")  # what a repr() in an old checkpoint looks like
    with pytest.raises(EffdlError, match="not a registered technique config"):
        config_to_dict(object())


def test_registration_refuses_non_dataclasses_bad_names_and_taken_names():
    with pytest.raises(EffdlError, match="must be a dataclass"):
        technique_config("demo.plain")(type("Plain", (), {}))
    with pytest.raises(EffdlError, match="'family.method'"):
        technique_config("nofamily")
    with pytest.raises(EffdlError, match="already"):
        technique_config("demo.scale")(dataclasses.make_dataclass("Other", []))


def test_dispatch_calls_the_handler_of_the_config_type_and_names_strangers():
    assert dispatch("demo", ScaleConfig(3.0), 2.0) == 6.0
    with pytest.raises(EffdlError, match="ScaleConfig is a demo config, not a quantize config"):
        dispatch("quantize", ScaleConfig(), 1.0)
    with pytest.raises(EffdlError, match="str is not a demo config"):
        dispatch("demo", "scale", 1.0)


def test_every_registered_technique_config_round_trips():
    import effdl.compress.prune  # noqa: F401  (registers the prune configs)
    import effdl.compress.quantize  # noqa: F401

    configs = registered_configs()
    assert {"quantize", "prune"} <= {name.partition(".")[0] for name in configs}
    for name, cls in configs.items():
        default = cls()
        data = config_to_dict(default)
        assert data["type"] == name and data["version"] == cls.config_version
        assert config_from_dict(json.loads(json.dumps(data))) == default, name
