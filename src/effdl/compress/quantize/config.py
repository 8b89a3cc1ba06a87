"""Quantization configs: each names a technique and says, layer by layer, which quantizers to use.

A config turns (layer name, layer, position) into a JSON layer spec
`{"weight": {...}, "act": {...} | None}` (or None to leave the layer alone); `quantize_` builds
the layers from those specs and records them so checkpoints can rebuild the model.
Bit-widths are checked here: weights and activations take 1..8 bits (16 is `Float16Config`).
Every config is registered as versioned data (`effdl.core.configs`): `config_to_dict(config)` is what a
checkpoint stores and `config_from_dict` reads it back; `quantize_` dispatches on the config's type.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Literal

from effdl.core.configs import technique_config
from effdl.errors import EffdlError

MIN_BITS, MAX_BITS = 1, 8
Position = Literal["first", "middle", "last"]


def check_bits(what: str, bits: int | None, optional: bool = False) -> None:
    if bits is None and optional:
        return
    if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise EffdlError(
            f"{what} must be an integer from {MIN_BITS} to {MAX_BITS} (use ptq-fp16 / Float16Config for 16), got {bits!r}"
        )


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise EffdlError(f"unknown {what} '{value}'; choose from {', '.join(choices)}")


@technique_config("quantize.float16", version=1)
@dataclass(frozen=True)
class Float16Config:
    """Post-training conversion of every parameter and the input to float16 or bfloat16."""

    dtype: str = "float16"

    def __post_init__(self):
        check_choice("half-precision dtype", self.dtype, ("float16", "bfloat16"))


@technique_config("quantize.int8_weight_only", version=1)
@dataclass(frozen=True)
class Int8WeightOnlyConfig:
    """int8 weights, symmetric per output channel; activations stay float."""

    def layer_spec(self, name: str, module: Any, position: Position) -> dict[str, Any] | None:
        return {"weight": {"kind": "minmax", "bits": 8, "per_channel": True}, "act": None}


@technique_config("quantize.int8_static", version=1)
@dataclass(frozen=True)
class Int8StaticConfig:
    """Post-training int8: symmetric per-channel weights, per-tensor affine activations.

    Activation ranges are calibrated afterwards with `calibrate(model, images)` using
    `calibration` = minmax, percentile (keep `percentile` % of values) or mse.
    `quantize_outputs`: also quantize (8-bit, calibrated the same way) the output of each layer
    whose output reaches a float operation such as a residual Add (see quantize/outputs.py), so
    that an int8 runtime can run every convolution on integers. Fold BatchNorm first
    (`fold_batchnorm`): a BatchNorm after a conv is a float operation too.
    """

    calibration: str = "minmax"
    percentile: float = 99.99
    quantize_outputs: bool = True

    def __post_init__(self):
        check_choice("calibration method", self.calibration, ("minmax", "percentile", "mse"))
        if not 50 < self.percentile <= 100:
            raise EffdlError(f"percentile must be in (50, 100], got {self.percentile}")

    def layer_spec(self, name: str, module: Any, position: Position) -> dict[str, Any] | None:
        return {
            "weight": {"kind": "minmax", "bits": 8, "per_channel": True},
            "act": {"kind": "range", "bits": 8, "method": self.calibration, "percentile": self.percentile},
        }


QAT_METHODS = ("lsq", "pact", "dorefa", "minmax")
_WEIGHT_KIND = {"lsq": "lsq", "pact": "minmax", "dorefa": "dorefa", "minmax": "minmax"}
_ACT_KIND = {"lsq": "lsq", "pact": "pact", "dorefa": "dorefa", "minmax": "range"}


@technique_config("quantize.fake_quant", version=2)
@dataclass(frozen=True)
class FakeQuantConfig:
    """Fake quantization for quantization-aware training at 1..8 bits, with mixed precision.

    method: lsq (learned step sizes for weights and activations), pact (min-max weights, PACT
    clipped activations), dorefa (DoReFa weights and activations), minmax (min-max weights,
    running-range activations). 1-bit weights are always sign x per-channel mean|w| (XNOR-style)
    and 1-bit activations sign(x). `act_bits=None` quantizes weights only.
    first_last_bits: bits for the first and last quantizable layers (None: same as the others).
    overrides: layer name (or fnmatch pattern) -> bits, or [weight_bits, act_bits].
    quantize_outputs: as in Int8StaticConfig, also quantize (with the layer's own activation
    quantizer kind and bits, trained with it) the output of each layer that reaches a float
    operation, after the layer's BatchNorm where it has one, round each residual block's input
    where it is made, and give layers reading one tensor (a block's first convolution and its
    projection shortcut) one shared input quantizer, so the int8 export runs every convolution and
    residual Add on integers
    (quantize/outputs.py). Only for activations on integer grids (lsq, pact, minmax at 2..8 bits;
    not DoReFa or 1-bit signs, which int8 export refuses). Version 1 configs, written before this
    field, read as False.
    """

    weight_bits: int = 4
    act_bits: int | None = 4
    method: str = "lsq"
    per_channel: bool = True
    first_last_bits: int | None = 8
    overrides: dict[str, Any] = field(default_factory=dict)
    quantize_outputs: bool = True

    @staticmethod
    def upgrade(fields: dict[str, Any], version: int) -> dict[str, Any]:
        """Version 1 (no output quantizers) -> 2."""
        return {**fields, "quantize_outputs": False}

    def __post_init__(self):
        check_bits("weight bits", self.weight_bits)
        check_bits("activation bits", self.act_bits, optional=True)
        check_bits("first/last layer bits", self.first_last_bits, optional=True)
        check_choice("QAT method", self.method, QAT_METHODS)
        for pattern, bits in self.overrides.items():
            for b in bits if isinstance(bits, (list, tuple)) else [bits]:
                check_bits(f"bits of override '{pattern}'", b, optional=True)

    def bits_for(self, name: str, position: Position) -> tuple[int, int | None]:
        weight_bits, act_bits = self.weight_bits, self.act_bits
        if position != "middle" and self.first_last_bits is not None:
            weight_bits = self.first_last_bits
            act_bits = self.first_last_bits if act_bits is not None else None
        for pattern, bits in self.overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                weight_bits, act_bits = tuple(bits) if isinstance(bits, (list, tuple)) else (bits, bits)
        return weight_bits, act_bits

    def layer_spec(self, name: str, module: Any, position: Position) -> dict[str, Any] | None:
        weight_bits, act_bits = self.bits_for(name, position)
        if weight_bits == 1:
            weight = {"kind": "binary", "bits": 1, "scaled": True}
        else:
            weight = {"kind": _WEIGHT_KIND[self.method], "bits": weight_bits, "per_channel": self.per_channel}
        act = None
        if act_bits == 1:
            act = {"kind": "sign", "bits": 1}
        elif act_bits is not None:
            act = {"kind": _ACT_KIND[self.method], "bits": act_bits}
            if act["kind"] == "range":
                act["method"] = "ema"
        return {"weight": weight, "act": act}


@dataclass(frozen=True, kw_only=True)
class _BinaryFamily:
    skip_first_last: bool = False

    def weight_spec(self) -> dict[str, Any]:
        raise NotImplementedError

    def binary_activations(self) -> bool:
        return False

    def layer_spec(self, name: str, module: Any, position: Position) -> dict[str, Any] | None:
        if self.skip_first_last and position != "middle":
            return None
        # The first layer reads the image: binarising it would throw the input away.
        act = {"kind": "sign", "bits": 1} if self.binary_activations() and position != "first" else None
        return {"weight": self.weight_spec(), "act": act}


@technique_config("quantize.binary_connect", version=1)
@dataclass(frozen=True)
class BinaryConnectConfig(_BinaryFamily):
    """BinaryConnect: +-1 weights (stochastic: sampled), latent weights clipped to [-1, 1].

    binary_activations: also binarise the inputs of every layer but the first (BNN).
    """

    stochastic: bool = False
    binary_acts: bool = False

    def weight_spec(self) -> dict[str, Any]:
        return {"kind": "binary", "bits": 1, "scaled": False, "stochastic": self.stochastic}

    def binary_activations(self) -> bool:
        return self.binary_acts


@technique_config("quantize.xnor", version=1)
@dataclass(frozen=True)
class XnorConfig(_BinaryFamily):
    """BWN / XNOR-Net: sign(w) x per-channel mean|w|; XNOR-Net also binarises activations."""

    binary_acts: bool = True

    def weight_spec(self) -> dict[str, Any]:
        return {"kind": "binary", "bits": 1, "scaled": True}

    def binary_activations(self) -> bool:
        return self.binary_acts


@technique_config("quantize.ternary", version=1)
@dataclass(frozen=True)
class TernaryConfig(_BinaryFamily):
    """Ternary weight networks: per channel {-a, 0, +a} with threshold `threshold` x mean|w|."""

    threshold: float = 0.7

    def __post_init__(self):
        if not 0 < self.threshold < 2:
            raise EffdlError(f"ternary threshold must be in (0, 2), got {self.threshold}")

    def weight_spec(self) -> dict[str, Any]:
        return {"kind": "ternary", "bits": 2, "threshold": self.threshold}


@technique_config("quantize.kmeans", version=1)
@dataclass(frozen=True)
class KMeansConfig(_BinaryFamily):
    """Deep Compression weight sharing: a 2^bits-entry k-means codebook per layer."""

    bits: int = 4

    def __post_init__(self):
        check_bits("k-means bits", self.bits)

    def weight_spec(self) -> dict[str, Any]:
        return {"kind": "kmeans", "bits": self.bits}


QuantConfig = (
    Float16Config | Int8WeightOnlyConfig | Int8StaticConfig | FakeQuantConfig | BinaryConnectConfig | XnorConfig
    | TernaryConfig | KMeansConfig
)
