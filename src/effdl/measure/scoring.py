"""The three scoring conventions of spec/scoring.md, computed from a `ModelProfile`.

`score(model_or_profile, "micronet" | "imt2021" | "imt2024", track)` returns a `ScoreResult`:
score = params / ref_params + ops / ref_ops, with the per-layer contributions, the references and
the track's accuracy threshold. Bits and sparsity always come from the profile, i.e. from the
model itself (quantizer declarations, storage dtype, measured zeros); nothing is declared here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

from torch import nn

from effdl.errors import unknown_name_error
from effdl.measure.counting import WEIGHTED_KINDS, LayerRecord, ModelProfile, profile, storage_bits


@dataclass(frozen=True)
class Track:
    """A competition track: the accuracy threshold and the reference model's counts."""

    name: str
    threshold: Fraction  # minimum top-1 accuracy, compared exactly
    reference: str
    ref_params: float
    ref_ops: float


@dataclass
class Contribution:
    """What one operation adds to a score, in 32-bit-equivalent parameters and operations."""

    name: str
    kind: str
    params: float
    ops: float


@dataclass
class ScoreResult:
    scorer: str
    track: str
    reference: str
    params: float  # parameter storage, in 32-bit values (imt2024: the bit-weighted w)
    ops: float  # operations (imt2024: the bit-weighted f)
    ref_params: float
    ref_ops: float
    threshold: Fraction
    contributions: list[Contribution] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def param_score(self) -> float:
        return self.params / self.ref_params

    @property
    def op_score(self) -> float:
        return self.ops / self.ref_ops

    @property
    def score(self) -> float:
        return self.param_score + self.op_score

    def qualifies(self, correct: int, total: int) -> bool:
        """True if `correct` of `total` test images reach the track's threshold (exact, no rounding)."""
        return total > 0 and correct * self.threshold.denominator >= self.threshold.numerator * total

    def to_dict(self) -> dict[str, Any]:
        return {
            "scorer": self.scorer, "track": self.track, "reference": self.reference,
            "score": self.score, "param_score": self.param_score, "op_score": self.op_score,
            "params": self.params, "ops": self.ops,
            "ref_params": self.ref_params, "ref_ops": self.ref_ops,
            "threshold": float(self.threshold), "notes": list(self.notes),
            "contributions": [asdict(c) for c in self.contributions],
        }


WRN_CIFAR100 = Track("cifar100", Fraction(80, 100), "WideResNet-28-10", 36.5e6, 10.49e9)
TRACKS: dict[str, dict[str, Track]] = {
    "micronet": {
        "cifar100": WRN_CIFAR100,
        "imagenet": Track("imagenet", Fraction(75, 100), "MobileNetV2 x1.4", 6.9e6, 1170e6),
    },
    "imt2021": {
        "cifar10": Track("cifar10", Fraction(90, 100), "ResNet18", 5_586_981, 834_362_880),
        "cifar100": WRN_CIFAR100,
    },
    "imt2024": {
        "cifar10": Track("cifar10", Fraction(90, 100), "ResNet18 (half precision)", 5.6e6, 2.8e8),
    },
}


def scorer_names() -> list[str]:
    return list(TRACKS)


def track_names(scorer: str) -> list[str]:
    if scorer not in TRACKS:
        raise unknown_name_error("scorer", scorer, TRACKS)
    return list(TRACKS[scorer])


def get_track(scorer: str, track: str | None = None) -> Track:
    """Track `track` of `scorer` (default: its first track)."""
    tracks = TRACKS.get(scorer)
    if tracks is None:
        raise unknown_name_error("scorer", scorer, TRACKS)
    if track is None:
        return next(iter(tracks.values()))
    if track not in tracks:
        raise unknown_name_error(f"track of scorer {scorer}", track, tracks)
    return tracks[track]


# ---------------------------------------------------------------------------------- micronet
def _consumers(layers: list[LayerRecord]) -> list[int]:
    count = [0] * len(layers)
    for record in layers:
        for source in record.sources:
            if source >= 0:
                count[source] += 1
    return count


def foldable_batchnorms(layers: list[LayerRecord]) -> dict[int, int]:
    """BN record -> the conv/linear record it folds into (its only input, read by nothing else)."""
    consumers = _consumers(layers)
    folds = {}
    for i, record in enumerate(layers):
        if record.kind == "bn" and len(record.sources) == 1:
            source = record.sources[0]
            if (source >= 0 and layers[source].kind in WEIGHTED_KINDS and layers[source].weight_numel
                    and consumers[source] == 1):
                folds[i] = source
    return folds


def _micronet(prof: ModelProfile, freebie: bool) -> tuple[list[Contribution], list[str]]:
    """MicroNet rules: BN folded, 16-bit freebie, sparse storage with bitmask, quantized op costs.

    Additions always cost 32/32: every add in these graphs reads a 32-bit accumulator or a
    dequantized output. Multiplies cost (largest input bits)/32, and a binary weight times a value
    with a stand-alone sign bit (a float, or a 1-bit sign activation) costs 1/32.

    A product with a weight operand (conv of any dimension or transposed, linear, a matmul-family
    call with a parameter on either side) multiplies only its non-zero weights:
    MACs x non-zeros / weight elements multiplies, one add fewer than multiplies per output
    element, plus one per output element for a bias. Products of two activations (attention) and
    every other operation use the dense counts of the profile.
    """
    layers = prof.layers
    low = [r.name for r in layers
           if (r.weight_bits is not None and r.weight_bits < 16) or r.act_bits < 16]
    use_freebie = freebie and not low
    notes = []
    if use_freebie:
        notes.append("16-bit freebie: parameters and multiplies counted at 16 bits, additions at 32")
    elif freebie:
        notes.append(f"no 16-bit freebie: {low[0]} is quantized below 16 bits")

    def bits(b: int) -> int:
        return min(b, 16) if use_freebie else b

    folds = foldable_batchnorms(layers)
    if folds:
        notes.append(f"{len(folds)} BatchNorm layers folded into the preceding conv/linear")
    folded_bias = {conv for bn, conv in folds.items() if not layers[conv].has_bias}
    params = [0.0] * len(layers)
    other_params = 0.0
    for p in prof.parameters:
        if p.layer is not None and layers[p.layer].kind == "bn":
            continue  # BN storage is decided per layer below (folded or not)
        value = storage_bits(p.numel, p.nonzero, bits(p.bits)) / 32
        if p.layer is None:
            other_params += value
        else:
            params[p.layer] += value

    ops = [0.0] * len(layers)
    for i, r in enumerate(layers):
        act = bits(r.act_bits)
        channels = r.output_shape[1] if len(r.output_shape) > 1 else r.out_elems
        if r.kind == "bn":
            bn_bits = bits(r.weight_bits or r.act_bits)
            if i in folds:  # scale is free; the shift becomes the conv's bias (unless it has one)
                if folds[i] in folded_bias:
                    params[folds[i]] += channels * bn_bits / 32
            else:  # a stand-alone per-channel affine map
                params[i] += 2 * channels * bn_bits / 32
                ops[i] = r.mults * act / 32 + r.adds
            continue
        if r.kind in WEIGHTED_KINDS and r.weight_numel:
            mults = r.sparse_mults  # = out_elems * L * (1 - sparsity) for a convolution
            has_bias = r.has_bias or i in folded_bias
            adds = max(mults - r.out_elems, 0) + (r.out_elems if has_bias else 0)
            w_bits = bits(r.weight_bits)
            if r.weight_bits == 1 and (r.act_bits >= 16 or r.act_bits == 1):
                mult_cost = 1 / 32
            else:
                mult_cost = max(w_bits, act) / 32
            ops[i] = mults * mult_cost + adds
            continue
        ops[i] = r.mults * act / 32 + r.adds
    contributions = [Contribution(r.name, r.kind, params[i], ops[i]) for i, r in enumerate(layers)]
    if other_params:
        contributions.append(Contribution("(parameters used by no counted operation)", "other", other_params, 0.0))
    return contributions, notes


# ----------------------------------------------------------------------------------- imt2021
def _imt2021(prof: ModelProfile, freebie: bool) -> tuple[list[Contribution], list[str]]:
    """IMT 2021-2024: every parameter (BN included, not folded) x bits/32, non-zeros only;
    multiplies of conv/linear scaled by q = bits/32, every other operation at full cost.

    Ops per output element: conv (k*k*Cin*q + k*k*Cin - 1)/groups (+1 with bias); linear
    in*q + in - 1 (+1 with bias); BN 3; any activation 1; avg-pool (k*k - 1) + 1; max-pool k*k - 1;
    element-wise add/mul 1; concatenation, flatten and permutations are data movement (0).
    Other products (transposed convolutions, matmul-family calls, attention): MACs x q plus every
    other multiply and add of the profile at full cost (for a matmul: K*q + K - 1 per output).
    q = max(weight bits, activation bits)/32, the activation bits alone for a product of activations.
    """
    layers = prof.layers
    params = [0.0] * len(layers)
    other_params = 0.0
    for p in prof.parameters:
        value = p.nonzero * p.bits / 32
        if p.layer is None:
            other_params += value
        else:
            params[p.layer] += value
    ops = [0.0] * len(layers)
    for i, r in enumerate(layers):
        n = r.out_elems
        if r.macs:
            q = max(r.weight_bits or r.act_bits, r.act_bits) / 32
            if r.kind == "conv" and not r.transposed and r.weight_shape:
                dot = r.weight_shape[1] * r.groups * math.prod(r.weight_shape[2:])  # k*k*Cin
                ops[i] = n * ((dot * q + dot - 1) / r.groups + (1 if r.has_bias else 0))
            else:
                ops[i] = r.macs * q + (r.mults - r.macs) + r.adds
        elif r.kind == "bn":
            ops[i] = 3 * n
        elif r.kind in ("avgpool", "global_avgpool"):
            ops[i] = n * r.window
        elif r.kind == "maxpool":
            ops[i] = n * (r.window - 1)
        elif r.kind in ("cat", "flatten", "permute"):
            ops[i] = 0.0
        else:  # activations, element-wise add and mul
            ops[i] = n
    contributions = [Contribution(r.name, r.kind, params[i], ops[i]) for i, r in enumerate(layers)]
    if other_params:
        contributions.append(Contribution("(parameters used by no counted operation)", "other", other_params, 0.0))
    return contributions, []


# ----------------------------------------------------------------------------------- imt2024
def _imt2024(prof: ModelProfile, freebie: bool) -> tuple[list[Contribution], list[str]]:
    """IMT since 2024: per conv/linear layer l,
    params_l = (1 - s_l) * (qw_l/32) * w_l  and  ops_l = (1 - p_s) * (max(qw_l, qa_l)/32) * f_l.

    w_l (weights and bias) and f_l (MACs) are measured on the model as it is, so a structurally
    pruned model whose channels were physically removed already has w_l = (1 - p_s) * w_l,orig
    (and likewise f_l): p_s is therefore taken as 0 here, otherwise structured pruning would be
    counted twice, and pruning that only zeroes whole channels without removing them shows up in
    the measured unstructured sparsity s_l (the params term) but not in f_l. (1 - s_l) * w_l is
    computed exactly as the number of non-zero weights and biases.
    """
    layers = prof.layers
    params = [0.0] * len(layers)
    for p in prof.parameters:
        if p.layer is not None and layers[p.layer].kind in WEIGHTED_KINDS and p.role in ("weight", "bias"):
            params[p.layer] += p.nonzero * (layers[p.layer].weight_bits or 32) / 32
    ops = [0.0] * len(layers)
    for i, r in enumerate(layers):
        if r.macs:
            ops[i] = r.macs * max(r.weight_bits or r.act_bits, r.act_bits) / 32
    return [Contribution(r.name, r.kind, params[i], ops[i]) for i, r in enumerate(layers)], []


_SCORERS: dict[str, Callable[[ModelProfile, bool], tuple[list[Contribution], list[str]]]] = {
    "micronet": _micronet,
    "imt2021": _imt2021,
    "imt2024": _imt2024,
}


def score(
    model_or_profile: nn.Module | ModelProfile,
    scorer: str,
    track: str | None = None,
    input_size: tuple[int, ...] | None = None,
    *,
    freebie: bool = True,
) -> ScoreResult:
    """Score a model (profiled on `input_size`) or an existing profile under `scorer`'s `track`.

    `input_size` is `profile`'s: the full input shape with batch 1 first; None (default): the size
    the model was trained at, (1, *model_input_size(model)). Ignored for a profile.

    `freebie` (micronet only) lets an entry without quantization below 16 bits count parameters
    and multiplies at 16 bits; pass False to count at the model's own bit-widths.
    """
    chosen = get_track(scorer, track)
    prof = model_or_profile if isinstance(model_or_profile, ModelProfile) else profile(model_or_profile, input_size)
    contributions, notes = _SCORERS[scorer](prof, freebie)
    return ScoreResult(
        scorer=scorer, track=chosen.name, reference=chosen.reference,
        params=sum(c.params for c in contributions), ops=sum(c.ops for c in contributions),
        ref_params=chosen.ref_params, ref_ops=chosen.ref_ops, threshold=chosen.threshold,
        contributions=contributions, notes=notes,
    )
