"""Distillation methods as versioned configs, and one verb: `distiller(config, student, teacher)`.

Each method is a frozen dataclass registered with `effdl.core.configs` ("distill.kd", ...) and a
handler that turns it into a trainer callback, so a new method is one config and one handler and
touches no command-line table: `METHODS` and `method_config("kd-std", alpha=0.9)` read the registry
(a method's command-line name is its config name after "distill.", "_" written "-").

How each adds to the label loss CE of a batch:

    kd       (1 - alpha) * CE + alpha * KD_T                         Hinton et al. 2015
    kd-std   (1 - alpha) * CE + alpha * kd_weight * KD_T(z-scored)   Sun et al. 2024
    dkd      CE + ramp * (alpha * TCKD + beta * NCKD)                 Zhao et al. 2022
    fitnets  CE + beta * sum over pairs of MSE(connector(s), t)      Romero et al. 2015 (jointly,
                                                                     as the CRD benchmark trains it)
    at       CE + beta/2 * sum over pairs of ||a(s) - a(t)||^2 mean  Zagoruyko & Komodakis 2017
    overhaul CE + beta * sum_i 2^(i-n) * partial L2(connector(s_i),  Heo et al. 2019
                                max(t_i, margin)) on pre-ReLU features

The fourth feature method is the "overhaul" family (Heo et al. 2019), chosen over CRD because it
needs nothing the trainer does not give a hook (CRD needs each image's dataset index for its
memory bank of negatives). Pre-ReLU features: for a stage, the input of the ReLU that ends it; a
stage that ends without a ReLU (a linear bottleneck) is taken as it is. The margin is per teacher
channel E[t | t < 0]: the paper derives it from the preceding BatchNorm assuming a Gaussian, but
after a residual sum no BatchNorm describes the feature, so it is measured on the first
`margin_batches` training batches instead (the teacher is frozen, so the estimate settles).

Feature methods name layers as "student.path=teacher.path"; with none given, the pairs come from
`propose_stage_pairs` (every stage for at and overhaul, the middle one for fitnets, FitNets'
single "guided layer").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from effdl.compress.distill.callbacks import FeatureDistillation, LogitDistillation, as_teacher
from effdl.compress.distill.layers import parse_layer_pairs, pre_activation_path, propose_stage_pairs
from effdl.compress.distill.losses import (
    Connector, attention_loss, dkd_loss, hint_loss, kd_loss, negative_mean, overhaul_loss, standardized_kd_loss,
)
from effdl.core.configs import dispatch, register_handler, registered_configs, technique_config
from effdl.core.hooks import Callback
from effdl.errors import EffdlError, UnreadOptionError, unknown_name_error


def _check_weight(name: str, value: float, low: float = 0.0, high: float | None = None, *,
                  low_open: bool = False) -> None:
    below = value <= low if low_open else value < low
    if below or (high is not None and value > high):
        span = f"{'(' if low_open else '['}{low}, {high}]" if high is not None else f"{'>' if low_open else '>='} {low}"
        raise EffdlError(f"distillation {name} must be {'in ' if high is not None else ''}{span}, got {value}")


@technique_config("distill.kd", version=1)
@dataclass(frozen=True)
class KDConfig:
    """Hinton KD: (1 - alpha) * CE + alpha * T^2 * KL(teacher_T || student_T)."""

    alpha: float = 0.9
    temperature: float = 4.0

    def __post_init__(self) -> None:
        _check_weight("alpha", self.alpha, 0.0, 1.0, low_open=True)
        _check_weight("temperature", self.temperature, 0.0, low_open=True)


@technique_config("distill.kd_std", version=1)
@dataclass(frozen=True)
class KDStdConfig:
    """KD on z-scored logits (Sun et al. 2024): (1 - alpha) * CE + alpha * kd_weight * KD_T(z(s), z(t)).

    Defaults follow the paper's CIFAR setting (CE weight 0.1, KD weight 9, base temperature 2):
    standardized logits have unit spread, so the KL is small and is weighted up."""

    alpha: float = 0.9
    temperature: float = 2.0
    kd_weight: float = 10.0

    def __post_init__(self) -> None:
        _check_weight("alpha", self.alpha, 0.0, 1.0, low_open=True)
        _check_weight("temperature", self.temperature, 0.0, low_open=True)
        _check_weight("kd_weight", self.kd_weight, 0.0, low_open=True)


@technique_config("distill.dkd", version=1)
@dataclass(frozen=True)
class DKDConfig:
    """Decoupled KD (Zhao et al. 2022): CE + ramp * (alpha * TCKD + beta * NCKD); `ramp` grows
    linearly from 0 to 1 over `ramp_epochs` (their warm-up: the large beta destabilises early training)."""

    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    ramp_epochs: float = 1.0

    def __post_init__(self) -> None:
        _check_weight("alpha", self.alpha)
        _check_weight("beta", self.beta)
        if self.alpha == 0 and self.beta == 0:
            raise EffdlError("DKD needs alpha (target part) or beta (non-target part) > 0")
        _check_weight("temperature", self.temperature, 0.0, low_open=True)
        _check_weight("ramp_epochs", self.ramp_epochs)


@technique_config("distill.fitnets", version=1)
@dataclass(frozen=True)
class FitNetsConfig:
    """FitNets hints: CE + beta * sum of MSE(connector(student feature), teacher feature);
    the connector is a learned 1x1 convolution + BatchNorm (and a resize when sizes differ)."""

    layers: tuple[str, ...] = ()
    beta: float = 100.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        parse_layer_pairs(self.layers)
        _check_weight("beta", self.beta, 0.0, low_open=True)


@technique_config("distill.at", version=1)
@dataclass(frozen=True)
class ATConfig:
    """Attention transfer: CE + beta / 2 * sum over pairs of the mean squared difference of the
    L2-normalised maps mean_c |a|^p (p = 2, beta = 1000 as in the paper)."""

    layers: tuple[str, ...] = ()
    beta: float = 1000.0
    p: float = 2.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        parse_layer_pairs(self.layers)
        _check_weight("beta", self.beta, 0.0, low_open=True)
        _check_weight("p", self.p, 0.0, low_open=True)


@technique_config("distill.overhaul", version=1)
@dataclass(frozen=True)
class OverhaulConfig:
    """Heo et al. (2019): CE + beta * sum_i 2^(i-n) * partial L2 on pre-ReLU features, summed over
    C, H, W and averaged over images (beta = 1e-3 as in their code); connector 1x1 conv + BatchNorm."""

    layers: tuple[str, ...] = ()
    beta: float = 1e-3
    margin_batches: int = 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        parse_layer_pairs(self.layers)
        _check_weight("beta", self.beta, 0.0, low_open=True)
        _check_weight("margin_batches", self.margin_batches, 1)


FEATURE_CONFIGS = (FitNetsConfig, ATConfig, OverhaulConfig)


def method_name(config_type: type) -> str:
    """The command-line name of a distillation config class: 'distill.kd_std' -> 'kd-std'."""
    return config_type.config_name.partition(".")[2].replace("_", "-")


def method_configs() -> dict[str, type]:
    """Every registered distillation method by command-line name ({'kd': KDConfig, ...})."""
    return {method_name(cls): cls for cls in registered_configs("distill").values()}


def is_feature_method(method: str) -> bool:
    """Whether `method` distills features (needs layers and a single teacher)."""
    return "layers" in {f.name for f in fields(_config_class(method))}


def _config_class(method: str) -> type:
    known = method_configs()
    if method not in known:
        raise unknown_name_error("distillation method", method, known)
    return known[method]


def refuse_unknown_options(method: str, names: list[str]) -> None:
    """UnreadOptionError, naming the first of `names` (option names given a value) that the config
    of known method `method` has no field for, with the options it has."""
    known = {f.name for f in fields(_config_class(method))}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UnreadOptionError(f"distillation method {method} has no option '{unknown[0]}'; its options: "
                                f"{', '.join(sorted(known))}", unknown[0])


def method_config(method: str, **options: Any) -> Any:
    """The config of `method` ("kd", "dkd", "kd-std", "fitnets", "at", "overhaul"...) with `options`
    (None values mean the method's default). Raises EffdlError for an unknown method (close names
    listed), an option the method does not have (its options listed) or a value out of range."""
    cls = _config_class(method)
    given = {k: v for k, v in options.items() if v is not None}
    refuse_unknown_options(method, sorted(given))
    if "layers" in given:
        given["layers"] = tuple(given["layers"])
    try:
        return cls(**given)
    except TypeError as exc:
        raise EffdlError(f"distillation method {method}: {exc}") from None


def distiller(config: Any, student: nn.Module, teacher: nn.Module | Sequence[nn.Module], *,
              input_size: Sequence[int] | None = None, scale: float = 1.0) -> Callback:
    """The trainer callback that distills `teacher` (a model, a list of models averaged, or a
    `Teacher`) into `student` as `config` says. `student` is the model to train or one built like it
    (feature methods read its layer shapes once; input `input_size` (C, H, W), default the model's
    own). `scale` multiplies the method's term (the prune/quantize `--distill` weight for methods
    that are not an alpha mix). Raises EffdlError for a config that is not a distillation method."""
    return dispatch("distill", config, student, teacher, input_size=input_size, scale=scale)


# -- handlers --------------------------------------------------------------------------------------

@register_handler(KDConfig)
def _kd(config: KDConfig, student: nn.Module, teacher: Any, *, input_size=None, scale: float = 1.0) -> Callback:
    def term(s, t, targets, ce, progress):
        # The trainer adds this to the label loss: alpha * (KD - CE) makes the (1 - alpha, alpha) mix.
        return config.alpha * (kd_loss(s, t, config.temperature) - ce)

    return LogitDistillation(teacher, term, method="kd", scale=scale)


@register_handler(KDStdConfig)
def _kd_std(config: KDStdConfig, student: nn.Module, teacher: Any, *, input_size=None, scale: float = 1.0) -> Callback:
    def term(s, t, targets, ce, progress):
        return config.alpha * (config.kd_weight * standardized_kd_loss(s, t, config.temperature) - ce)

    return LogitDistillation(teacher, term, method="kd-std", scale=scale)


@register_handler(DKDConfig)
def _dkd(config: DKDConfig, student: nn.Module, teacher: Any, *, input_size=None, scale: float = 1.0) -> Callback:
    def term(s, t, targets, ce, progress):
        ramp = min(1.0, progress / config.ramp_epochs) if config.ramp_epochs > 0 else 1.0
        return ramp * dkd_loss(s, t, targets, alpha=config.alpha, beta=config.beta, temperature=config.temperature)

    return LogitDistillation(teacher, term, method="dkd", scale=scale)


def _pairs(config: Any, student: nn.Module, teacher: Any, input_size, choose=lambda pairs: pairs) -> list:
    if config.layers:
        return parse_layer_pairs(config.layers)
    return choose(propose_stage_pairs(student, as_teacher(teacher).first, input_size))


@register_handler(FitNetsConfig)
def _fitnets(config: FitNetsConfig, student: nn.Module, teacher: Any, *, input_size=None,
             scale: float = 1.0) -> Callback:
    teacher = as_teacher(teacher)
    pairs = _pairs(config, student, teacher, input_size, choose=lambda p: [p[len(p) // 2]])

    def term(s_feats, t_feats, state):
        return config.beta * sum(hint_loss(s, t) for s, t in zip(s_feats, t_feats))

    return FeatureDistillation(teacher, student, pairs, term, method="fitnets", make_connector=Connector,
                               input_size=input_size, scale=scale)


@register_handler(ATConfig)
def _at(config: ATConfig, student: nn.Module, teacher: Any, *, input_size=None, scale: float = 1.0) -> Callback:
    teacher = as_teacher(teacher)
    pairs = _pairs(config, student, teacher, input_size)

    def term(s_feats, t_feats, state):
        return config.beta / 2 * sum(attention_loss(s, t, config.p) for s, t in zip(s_feats, t_feats))

    # Attention maps average over channels and are resized to the teacher's map: no weights to learn.
    return FeatureDistillation(teacher, student, pairs, term, method="at", make_connector=lambda s, t: None,
                               input_size=input_size, scale=scale)


@register_handler(OverhaulConfig)
def _overhaul(config: OverhaulConfig, student: nn.Module, teacher: Any, *, input_size=None,
              scale: float = 1.0) -> Callback:
    teacher = as_teacher(teacher)
    pairs = _pairs(config, student, teacher, input_size)
    if not config.layers:  # stages name their block; the pre-ReLU feature is the input of its last ReLU
        pairs = [(pre_activation_path(student, s, input_size), pre_activation_path(teacher.first, t, input_size))
                 for s, t in pairs]
    weights = [2.0 ** (i - len(pairs)) for i in range(1, len(pairs) + 1)]

    def term(s_feats, t_feats, state):
        sums, counts = state.state.setdefault("margin", ([0.0] * len(t_feats), [0.0] * len(t_feats)))
        if state.state.setdefault("batches", 0) < config.margin_batches:
            for i, t in enumerate(t_feats):
                total, count = negative_mean(t)
                sums[i], counts[i] = sums[i] + total, counts[i] + count
            state.state["batches"] += 1
        loss = torch.zeros((), device=t_feats[0].device)
        for i, (s, t) in enumerate(zip(s_feats, t_feats)):
            margin = sums[i] / torch.clamp(counts[i], min=1.0)
            loss = loss + weights[i] * overhaul_loss(s, t, margin)
        return config.beta * loss

    def connector(s_shape, t_shape):
        if len(s_shape) != 4:
            raise EffdlError("overhaul distills [N, C, H, W] feature maps; name convolutional layers")
        return Connector(s_shape, t_shape)

    return FeatureDistillation(teacher, student, pairs, term, method="overhaul", make_connector=connector,
                               pre_activation=True, input_size=input_size, scale=scale)


def finetune_distiller(teacher: nn.Module, weight: float, temperature: float = 4.0, method: str = "kd", *,
                       input_size: Sequence[int] | None = None) -> Callback:
    """The callback of a compression fine-tune's `--distill WEIGHT --distill-temperature T
    --distill-method METHOD`: the uncompressed `teacher` (copied now, before compression changes it)
    teaches its compressed self. For kd and kd-std WEIGHT is alpha, the distillation share of the
    loss; for the other methods it scales the method's own term (default weights). Feature methods
    pair the model's stages with themselves; a student whose channels are pruned later gets
    connectors sized when its fine-tune starts. T applies to the methods that have a temperature."""
    cls = _config_class(method)
    if method == "kd":
        from effdl.compress.distill.kd import Distillation

        return Distillation(teacher, weight, temperature)
    names = {f.name for f in fields(cls)}
    options: dict[str, Any] = {"temperature": temperature} if "temperature" in names else {}
    mixes = method in ("kd", "kd-std")
    if mixes:
        options["alpha"] = weight
    config = method_config(method, **options)
    return distiller(config, teacher, teacher, input_size=input_size, scale=1.0 if mixes else weight)
