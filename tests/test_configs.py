"""Technique configs as versioned data (effdl.core.configs) and the one-verb-per-family dispatch.

Every registered quantize / prune config round-trips through a dict; unknown types, fields and
newer versions are refused with their name; `quantize_` and `prune_` dispatch on the config type;
a method registered here, outside effdl, needs no table anywhere.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

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

    import effdl.compress.distill  # noqa: F401
    import effdl.compress.factorize  # noqa: F401

    # Low-rank factorizations need one rank rule, block pruning a count: they have no all-defaults config.
    needs = {name: {"rank": 2} for name in ("factorize.svd", "factorize.spatial_svd", "factorize.tucker2", "factorize.cp")}
    needs["prune.blocks"] = {"blocks": 2, "include": ("layers.*",)}  # how many blocks: no default either
    configs = registered_configs()
    assert {"quantize", "prune", "distill", "factorize"} <= {name.partition(".")[0] for name in configs}
    for name, cls in configs.items():
        default = cls(**needs.get(name, {}))
        data = config_to_dict(default)
        assert data["type"] == name and data["version"] == cls.config_version
        assert config_from_dict(json.loads(json.dumps(data))) == default, name


# ------------------------------------------------------------------------------------ quantize


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def test_quantize_dispatches_on_the_config_type_and_refuses_other_families():
    from effdl.compress.prune import MagnitudePruneConfig
    from effdl.compress.quantize import Float16Config, KMeansConfig, TernaryConfig, quantize_, quantized_layers

    half = quantize_(_tiny_net(), Float16Config("bfloat16"))
    assert half[0].weight.dtype == torch.bfloat16 and not quantized_layers(half)
    ternary = quantize_(_tiny_net(), TernaryConfig())
    assert {layer.weight_bits for layer in quantized_layers(ternary).values()} == {2}
    kmeans = quantize_(_tiny_net(), KMeansConfig(bits=3))
    assert all(len(layer.quantized_weight().unique()) <= 8 for layer in quantized_layers(kmeans).values())
    with pytest.raises(EffdlError, match="MagnitudePruneConfig is a prune config, not a quantize config"):
        quantize_(_tiny_net(), MagnitudePruneConfig(sparsity=0.5))


def test_a_new_method_and_quantizer_kind_need_no_table(tmp_path):
    """A method defined outside effdl: one config, one handler, one quantizer class, nothing else."""
    from effdl.checkpoint import load_model, save_model
    from effdl.compress.quantize import quantize_, quantized_layers
    from effdl.compress.quantize.api import quantize_by_layer_spec
    from effdl.compress.quantize.quantizers import ACT_QUANTIZERS, WEIGHT_QUANTIZERS, weight_quantizer
    from effdl.models import create_model

    before = (dict(WEIGHT_QUANTIZERS), dict(ACT_QUANTIZERS), registered_configs("quantize"))

    @weight_quantizer("test_powers_of_two")
    class PowerOfTwoWeight(nn.Module):
        """Weights rounded to signed powers of two (scale-free, 1 + `bits - 1` exponent bits)."""

        per_channel = False

        def __init__(self, bits: int):
            super().__init__()
            self.bits = bits

        @classmethod
        def from_spec(cls, spec, weight, fit=True):
            return cls(spec["bits"])

        def forward(self, w: torch.Tensor) -> torch.Tensor:
            exponent = torch.log2(w.abs().clamp_min(1e-8)).round().clamp(-(2 ** (self.bits - 1)) + 1, 0)
            return w + (torch.sign(w) * 2.0 ** exponent - w).detach()

    @technique_config("quantize.test_powers_of_two", version=1)
    @dataclasses.dataclass(frozen=True)
    class PowerOfTwoConfig:
        bits: int = 3

        def layer_spec(self, name, module, position):
            return {"weight": {"kind": "test_powers_of_two", "bits": self.bits}, "act": None}

    register_handler(PowerOfTwoConfig)(quantize_by_layer_spec)
    try:
        model = quantize_(create_model("resnet20", width=0.25), PowerOfTwoConfig())
        layers = quantized_layers(model)
        assert layers and all(layer.weight_bits == 3 for layer in layers.values())
        assert all(len(layer.quantized_weight().abs().unique()) <= 4 for layer in layers.values())
        x = torch.randn(2, 3, 32, 32)
        model.eval()
        reloaded, _ = load_model(save_model(tmp_path / "p2.safetensors", model))
        assert torch.allclose(reloaded.eval()(x), model(x), atol=1e-5)
        assert config_from_dict(config_to_dict(PowerOfTwoConfig(2))) == PowerOfTwoConfig(2)
        # the built-in kinds and methods are exactly what they were, plus the new ones
        weight_kinds, act_kinds, methods = before
        assert {k: v for k, v in WEIGHT_QUANTIZERS.items() if k != "test_powers_of_two"} == weight_kinds
        assert ACT_QUANTIZERS == act_kinds
        assert set(registered_configs("quantize")) - set(methods) == {"quantize.test_powers_of_two"}
    finally:  # leave the registries as other tests expect them
        WEIGHT_QUANTIZERS.pop("test_powers_of_two", None)


# --------------------------------------------------------------------------------------- prune


def test_prune_dispatches_magnitude_and_channel_configs():
    from effdl.compress.prune import ChannelPruneConfig, MagnitudePruneConfig, measure_sparsity, prune_
    from effdl.compress.quantize import TernaryConfig
    from effdl.models import create_model

    model = _tiny_net()
    masks = prune_(model, MagnitudePruneConfig(sparsity=0.5, exclude=("4",)))
    assert set(masks) == {"0", "2"}
    per_layer = measure_sparsity(model).per_layer
    assert 0.45 < (per_layer["0"] * 108 + per_layer["2"] * 144) / 252 < 0.55 and per_layer["4"] == 0

    resnet = create_model("resnet20", width=0.25)
    convs = sum(m.out_channels for m in resnet.modules() if isinstance(m, nn.Conv2d))
    pruned = prune_(resnet, ChannelPruneConfig(ratio=0.5, criterion="l2"))
    assert pruned and sum(m.out_channels for m in resnet.modules() if isinstance(m, nn.Conv2d)) < 0.8 * convs
    assert resnet(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(EffdlError, match="TernaryConfig is a quantize config, not a prune config"):
        prune_(_tiny_net(), TernaryConfig())


def test_prune_configs_refuse_bad_options_by_name():
    from effdl.compress.prune import ChannelPruneConfig, MagnitudePruneConfig

    with pytest.raises(EffdlError, match="unknown pruning criterion 'l3'"):
        ChannelPruneConfig(criterion="l3")
    with pytest.raises(EffdlError, match="exactly one of ratio and target_macs"):
        ChannelPruneConfig(ratio=0.3, target_macs=0.5)
    with pytest.raises(EffdlError, match="in \\[0, 1\\)"):
        MagnitudePruneConfig(sparsity={"0": 1.5})
    with pytest.raises(EffdlError, match="unknown scope 'local'"):
        config_from_dict({"type": "prune.magnitude", "version": 1, "scope": "local"})


def test_a_new_channel_criterion_is_one_registration():
    import torch_pruning as tp

    from effdl.compress.prune import ChannelPruneConfig, prune_, register_criterion
    from effdl.compress.prune.criteria import CRITERIA

    class FirstChannelsFirst(tp.importance.Importance):
        """Scores channels by index: the last channels are the most important."""

        def __call__(self, group):
            return torch.arange(len(group[0].idxs), dtype=torch.float32)

    before = dict(CRITERIA)
    register_criterion("test_by_index")(lambda **_: FirstChannelsFirst())
    try:
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
        kept = model[0].weight[4:].detach().clone()
        prune_(model, ChannelPruneConfig(ratio=0.5, criterion="test_by_index"), example_inputs=torch.randn(1, 3, 8, 8))
        assert model[0].out_channels == 4 and torch.equal(model[0].weight, kept)
        assert {k: v for k, v in CRITERIA.items() if k != "test_by_index"} == before
    finally:
        CRITERIA.pop("test_by_index", None)


@pytest.mark.parametrize("method", ["fake_quant", "float16"])
def test_a_checkpoint_stores_the_quantize_config_as_data(method, tmp_path):
    from effdl.checkpoint import load_model, save_model
    from effdl.compress.quantize import FakeQuantConfig, Float16Config, quantization_config, quantize_
    from effdl.models import create_model

    config = (FakeQuantConfig(weight_bits=3, act_bits=None, overrides={"layers.0.*": [8, None]})
              if method == "fake_quant" else Float16Config("bfloat16"))
    model = quantize_(create_model("resnet20", width=0.25), config)
    assert quantization_config(model) == config
    reloaded, _ = load_model(save_model(tmp_path / "q.safetensors", model))
    assert quantization_config(reloaded) == config
    assert quantization_config(create_model("resnet20", width=0.25)) is None


def test_a_registry_refuses_a_second_entry_under_a_taken_name_and_accepts_the_same_one_again():
    from effdl.core import Registry

    table = Registry("demo kind")

    def first():
        return 1

    assert table.register("a")(first) is first and table.register("a")(first) is first  # re-import: fine

    def other():
        return 2

    with pytest.raises(EffdlError, match="demo kind 'a' is already"):
        table.register("a")(other)
    assert table == {"a": first}


def test_a_version_1_qat_config_reads_as_made_without_output_quantizers():
    """FakeQuantConfig version 2 added quantize_outputs (default on); checkpoints written before it
    were quantized without them, and their recorded config must say so."""
    from effdl.compress.quantize import FakeQuantConfig

    old = {"type": "quantize.fake_quant", "version": 1, "weight_bits": 4, "act_bits": 4, "method": "lsq",
           "per_channel": True, "first_last_bits": 8, "overrides": {}}
    assert config_from_dict(old) == FakeQuantConfig(quantize_outputs=False)
    assert config_from_dict(config_to_dict(FakeQuantConfig())).quantize_outputs is True



def test_a_data_root_is_recorded_absolute_and_a_recorded_one_that_is_gone_falls_back(tmp_path, monkeypatch):
    # `effdl eval` of the README demo's int8 stage looked for "../shared/data" from another folder
    from effdl.pipelines.sources import recorded_data_root
    from effdl.train import TrainConfig

    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path / "data")
    assert TrainConfig(data_root="../data").data_root == str(tmp_path / "data")
    assert recorded_data_root({"data_root": str(tmp_path / "data")}) == str(tmp_path / "data")
    assert recorded_data_root({"data_root": str(tmp_path / "moved")}) is None  # then $EFFDL_DATA
    assert recorded_data_root({}) is None


def test_channels_last_is_on_by_default_except_on_avx2_only_cpus(monkeypatch):
    # oneDNN's AVX2 1x1 stride-2 weight gradient on 3-5 input channels hangs in NHWC (torch 2.14.1)
    import torch

    from effdl.device import default_channels_last

    for capability, expected in (("AVX2", False), ("AVX512", True), ("AVX512_BF16", True)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert default_channels_last(torch.device("cpu")) is expected
    assert default_channels_last(torch.device("cuda"))
