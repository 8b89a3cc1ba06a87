"""Weight and activation quantizers: small modules mapping a float tensor to its quantized values.

Every quantizer has `bits` and `per_channel` and is built from a JSON spec (`{"kind": ..., ...}`)
by `build_weight_quantizer` / `build_act_quantizer` through the kind registries (`weight_quantizer`,
`act_quantizer` decorators), so checkpoints can rebuild it. Gradients use
straight-through estimators (see ste.py). Weight quantizers keep the float weight as the trained
("latent") copy; the quantized values are recomputed from it on every forward.

Weight kinds: minmax (uniform symmetric, scale = max|w| / (2^(b-1)-1)), lsq (learned step size,
Esser et al. 2020), dorefa (tanh-normalised, Zhou et al. 2016), binary (sign, optionally scaled by
the per-channel mean |w| as in BWN/XNOR-Net, optionally stochastic as in BinaryConnect), ternary
(TWN, Li et al. 2016), kmeans (shared codebook, Han et al. 2016).
Activation kinds: range (affine uint grid over a calibrated or running range), lsq, pact (learned
clipping level, Choi et al. 2018), dorefa (clip to [0, 1]), sign (binary activations).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from effdl.compress.quantize.ste import passthrough, round_ste, scale_grad, sign_hardtanh_ste, sign_ste
from effdl.core.registry import Registry
from effdl.errors import EffdlError, unknown_name_error

HISTOGRAM_BINS = 2048

# kind -> quantizer class; each class builds itself from a spec with `from_spec`, so a new kind is
# one decorated class and the builders below never change.
WEIGHT_QUANTIZERS: Registry = Registry("weight quantizer kind")
ACT_QUANTIZERS: Registry = Registry("activation quantizer kind")


def weight_quantizer(kind: str):
    """Class decorator: build specs of `kind` with this class's `from_spec(spec, weight, fit)`."""
    return WEIGHT_QUANTIZERS.register(kind)


def act_quantizer(kind: str):
    """Class decorator: build activation specs of `kind` with this class's `from_spec(spec)`."""
    return ACT_QUANTIZERS.register(kind)


def _channel_view(t: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A per-output-channel vector shaped to broadcast against `weight`."""
    return t.view(-1, *([1] * (weight.dim() - 1)))


def _per_channel_abs_mean(w: torch.Tensor) -> torch.Tensor:
    return w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)


@torch.no_grad()
def mse_step(x: torch.Tensor, qn: int, qp: int, candidates: int = 64) -> torch.Tensor:
    """Per row of `x` ([rows, n]), the step s minimising mean((s * round(clamp(x / s, -qn, qp)) - x)^2).

    A grid search over s = a * max|x| / qp for a in (0, 1]. LSQ's own rule, 2 mean|x| / sqrt(qp),
    starts far from this at low bit widths (a trained resnet20 at 4 bits: 69% of 2,000 test images
    before fine-tuning with it, 85% with this), and QAT then spends its first epochs recovering.
    """
    x = x.float()
    top = x.abs().amax(dim=1).clamp(min=1e-8) / max(qp, 1)
    best_step, best_err = top.clone(), torch.full_like(top, float("inf"))
    for a in torch.arange(1, candidates + 1, device=x.device) / candidates:
        step = (a * top).unsqueeze(1)
        err = (torch.round((x / step).clamp(-qn, qp)) * step - x).pow(2).mean(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_step = torch.where(better, step.squeeze(1), best_step)
    return best_step


def fake_quantize_float(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, quant_min: int, quant_max: int
) -> torch.Tensor:
    """`torch.fake_quantize_per_{tensor,channel}_affine` written with plain float ops, bit for bit.

    Same arithmetic as PyTorch's kernel (multiply by the float32 reciprocal of the scale, round
    half to even, add the zero point, clamp, subtract, multiply by the scale), so an exported
    graph computes exactly the fake-quant values. ONNX export uses it because ONNX's
    QuantizeLinear only expresses 8-bit grids, and the fake-quant model is a float model anyway.
    `scale` and `zero_point` are float32 tensors broadcastable to `x`.
    """
    inverse = 1.0 / scale
    return (torch.clamp(torch.round(x * inverse) + zero_point, quant_min, quant_max) - zero_point) * scale


def _constant(t: torch.Tensor) -> torch.Tensor:
    # During ONNX export the scales must appear as constants, not as ops on the weight.
    return torch.tensor(t.tolist(), dtype=t.dtype) if torch.onnx.is_in_onnx_export() else t


# ---------------------------------------------------------------------------------------- weights


@weight_quantizer("minmax")
class MinMaxWeight(nn.Module):
    """Symmetric uniform weights: scale = max|w| / (2^(b-1)-1) per channel (or per tensor)."""

    @classmethod
    def from_spec(cls, spec: dict[str, Any], weight: torch.Tensor, fit: bool = True) -> MinMaxWeight:
        return cls(spec["bits"], spec.get("per_channel", True))

    def __init__(self, bits: int, per_channel: bool = True):
        super().__init__()
        self.bits, self.per_channel = bits, per_channel

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        qmax = 2 ** (self.bits - 1) - 1
        w = w.detach().float()
        absmax = w.abs().amax(dim=tuple(range(1, w.dim()))) if self.per_channel else w.abs().max().reshape(1)
        return (absmax / qmax).clamp(min=1e-12)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        qmax = 2 ** (self.bits - 1) - 1
        scale = _constant(self.scale(w))
        zero = torch.zeros_like(scale, dtype=torch.int32)
        w32 = w.float()  # the fake-quantize ops take float32 only (e.g. not under bf16 autocast)
        if torch.onnx.is_in_onnx_export():
            scale_view = _channel_view(scale, w32) if self.per_channel else scale
            return fake_quantize_float(w32, scale_view, torch.zeros_like(scale_view), -qmax - 1, qmax).to(w.dtype)
        if self.per_channel:
            return torch.fake_quantize_per_channel_affine(w32, scale, zero, 0, -qmax - 1, qmax).to(w.dtype)
        return torch.fake_quantize_per_tensor_affine(w32, scale, zero, -qmax - 1, qmax).to(w.dtype)


@weight_quantizer("lsq")
class LSQWeight(nn.Module):
    """Learned step size: w_q = s * round(clamp(w / s, -2^(b-1), 2^(b-1)-1)), s trained from the
    step that minimises the weights' squared quantization error (per channel)."""

    @classmethod
    def from_spec(cls, spec: dict[str, Any], weight: torch.Tensor, fit: bool = True) -> LSQWeight:
        return cls(spec["bits"], weight, spec.get("per_channel", True))

    def __init__(self, bits: int, weight: torch.Tensor, per_channel: bool = True):
        super().__init__()
        self.bits, self.per_channel = bits, per_channel
        self.qn, self.qp = 2 ** (bits - 1), 2 ** (bits - 1) - 1
        w = weight.detach().float()
        rows = w.flatten(1) if per_channel else w.reshape(1, -1)
        self.step = nn.Parameter(mse_step(rows, self.qn, self.qp) + 1e-8)
        self.grad_factor = 1.0 / math.sqrt((w[0].numel() if per_channel else w.numel()) * max(self.qp, 1))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        step = scale_grad(self.step.clamp(min=1e-8), self.grad_factor)
        step = _channel_view(step, w) if self.per_channel else step
        return round_ste((w / step).clamp(-self.qn, self.qp)) * step


@weight_quantizer("dorefa")
class DoReFaWeight(nn.Module):
    """DoReFa-Net weights: tanh(w) mapped to [0, 1], quantized to 2^b levels, mapped to [-1, 1]."""

    per_channel = False

    @classmethod
    def from_spec(cls, spec: dict[str, Any], weight: torch.Tensor, fit: bool = True) -> DoReFaWeight:
        return cls(spec["bits"])

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        levels = 2**self.bits - 1
        t = torch.tanh(w)
        t = t / (2 * t.abs().max().detach().clamp(min=1e-12)) + 0.5
        return 2 * round_ste(t * levels) / levels - 1


@weight_quantizer("binary")
class BinaryWeight(nn.Module):
    """sign(w) (BinaryConnect), times the per-channel mean |w| when `scaled` (BWN / XNOR-Net).

    `stochastic` draws +1 with probability hard_sigmoid(w) during training (stochastic
    BinaryConnect); evaluation always uses the deterministic sign. `clip_latent` asks the training
    loop to keep the latent float weights in [-1, 1] (see `clip_latent_weights_`).
    """

    bits = 1

    @classmethod
    def from_spec(cls, spec: dict[str, Any], weight: torch.Tensor, fit: bool = True) -> BinaryWeight:
        return cls(spec.get("scaled", False), spec.get("stochastic", False))

    def __init__(self, scaled: bool = False, stochastic: bool = False):
        super().__init__()
        self.scaled, self.stochastic = scaled, stochastic
        self.per_channel = scaled
        self.clip_latent = not scaled

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.stochastic and self.training:
            prob_plus = ((w.detach() + 1) / 2).clamp(0, 1)
            signs = torch.where(torch.rand_like(w) < prob_plus, 1.0, -1.0).to(w.dtype)
            binary = passthrough(signs, w)
        else:
            binary = sign_ste(w)
        return binary * _per_channel_abs_mean(w) if self.scaled else binary


@weight_quantizer("ternary")
class TernaryWeight(nn.Module):
    """Ternary weights (TWN): per channel {-a, 0, +a} with threshold t * mean|w|, a = mean kept |w|."""

    bits = 2
    per_channel = True

    @classmethod
    def from_spec(cls, spec: dict[str, Any], weight: torch.Tensor, fit: bool = True) -> TernaryWeight:
        return cls(spec.get("threshold", 0.7))

    def __init__(self, threshold: float = 0.7):
        super().__init__()
        self.threshold = threshold

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        delta = self.threshold * _per_channel_abs_mean(w.detach())
        keep = (w.detach().abs() > delta).to(w.dtype)
        dims = tuple(range(1, w.dim()))
        alpha = (w.abs() * keep).sum(dims, keepdim=True) / keep.sum(dims, keepdim=True).clamp(min=1)
        ternary = torch.sign(w.detach()) * keep * alpha
        return ternary + (w - w.detach())  # exact values; identity gradient plus the one through alpha


@weight_quantizer("kmeans")
class KMeansWeight(nn.Module):
    """Deep Compression weight sharing: one codebook of 2^b centroids per layer, trainable.

    The weight used is `centroids[labels]`; indexing accumulates each weight's gradient into its
    centroid, which is the centroid fine-tuning of Han et al. (2016).
    """

    per_channel = False

    @classmethod
    def from_spec(cls, spec: dict[str, Any], weight: torch.Tensor, fit: bool = True) -> KMeansWeight:
        return cls(spec["bits"], weight, fit=fit)

    def __init__(self, bits: int, weight: torch.Tensor, fit: bool = True, iterations: int = 30):
        super().__init__()
        self.bits = bits
        self.centroids = nn.Parameter(torch.zeros(2**bits))
        self.register_buffer("labels", torch.zeros(weight.shape, dtype=torch.uint8 if bits <= 8 else torch.int64))
        if fit:
            centroids, labels = kmeans_1d(weight.detach().float().flatten(), 2**bits, iterations)
            self.centroids.data.copy_(centroids)
            self.labels.copy_(labels.view(weight.shape))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.centroids[self.labels.long()].to(w.dtype)


def kmeans_1d(values: torch.Tensor, k: int, iterations: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on scalars, linearly initialised over [min, max] (as Deep Compression)."""
    centroids = torch.linspace(float(values.min()), float(values.max()), k)
    for _ in range(iterations):
        labels = _nearest(values, centroids)
        counts = torch.bincount(labels, minlength=k).float()
        sums = torch.bincount(labels, weights=values, minlength=k)
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        converged = torch.allclose(updated, centroids)
        centroids = updated.sort().values
        if converged:
            break
    return centroids, _nearest(values, centroids)


def _nearest(values: torch.Tensor, sorted_centroids: torch.Tensor) -> torch.Tensor:
    midpoints = (sorted_centroids[1:] + sorted_centroids[:-1]) / 2
    return torch.bucketize(values, midpoints)


def build_weight_quantizer(spec: dict[str, Any], weight: torch.Tensor, fit: bool = True) -> nn.Module:
    """The weight quantizer a spec describes; `fit=False` skips data-dependent fitting (replay)."""
    kind = spec.get("kind")
    if kind not in WEIGHT_QUANTIZERS:
        raise unknown_name_error("weight quantizer kind", str(kind), WEIGHT_QUANTIZERS)
    return WEIGHT_QUANTIZERS[kind].from_spec(spec, weight, fit)


# ------------------------------------------------------------------------------------ activations


class LazyAct(nn.Module):
    """An activation quantizer that learns from the first batch whether its input is signed.

    The two flags live in buffers (so checkpoints keep them) and are mirrored in a Python tuple
    that the forward pass reads: reading a tensor as a bool inside torch.compile splits the graph,
    one break per quantized layer, which made compiled QAT several times slower.
    """

    per_channel = False

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> LazyAct:
        return cls(spec["bits"])

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits
        self.register_buffer("signed", torch.tensor(False))
        self.register_buffer("ready", torch.tensor(False))
        self._grid: tuple[int, int] | None = None  # levels() once ready; None: read the buffers

    def levels(self) -> tuple[int, int]:
        """(-lowest, highest) integer of the grid."""
        return self._grid if self._grid is not None else self._levels_from_buffers()

    @property
    def known_levels(self) -> tuple[int, int] | None:
        """`levels()` once a forward pass has read or set them, else None; reads no tensor (no host
        sync, no graph break), unlike `levels()` before that."""
        return self._grid

    def _levels_from_buffers(self) -> tuple[int, int]:
        if bool(self.signed):
            return 2 ** (self.bits - 1), 2 ** (self.bits - 1) - 1
        return 0, 2**self.bits - 1

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        self.signed.fill_(bool(x.min() < 0))
        self.ready.fill_(True)
        self._grid = self._levels_from_buffers()

    def reset(self) -> None:
        """Forget the initialisation: the next batch initialises again (calibration)."""
        self.ready.fill_(False)
        self._grid = None

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        # The buffers may have changed: read them now (once), so `known_levels` is right before any
        # forward pass (the int8 exporter reads it on a model loaded from a checkpoint).
        ready = self.ready.device.type != "meta" and bool(self.ready)
        self._grid = self._levels_from_buffers() if ready else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._grid is None:
            if bool(self.ready):
                self._grid = self._levels_from_buffers()
            else:
                self.initialize(x)
        return self.quantize(x)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@act_quantizer("lsq")
class LSQAct(LazyAct):
    """Learned step size on activations; the step starts at the one that minimises the squared
    quantization error of the first batch (calibration's), on up to 2^18 of its values."""

    def __init__(self, bits: int):
        super().__init__(bits)
        self.step = nn.Parameter(torch.tensor(1.0))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        super().initialize(x)
        values = x.detach().flatten()
        values = values[:: max(1, values.numel() >> 18)]
        self.step.fill_(float(mse_step(values.unsqueeze(0), *self.levels())[0]) + 1e-8)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        qn, qp = self.levels()
        step = scale_grad(self.step.clamp(min=1e-8), 1.0 / math.sqrt(x[0].numel() * qp))
        return round_ste((x / step).clamp(-qn, qp)) * step


@act_quantizer("pact")
class PACTAct(LazyAct):
    """PACT: clip to a learned level alpha (to [-alpha, alpha] for signed inputs), then quantize."""

    def __init__(self, bits: int):
        super().__init__(bits)
        self.alpha = nn.Parameter(torch.tensor(1.0))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        super().initialize(x)
        sample = x.detach().abs().flatten()[:1_000_000].float()
        self.alpha.fill_(float(torch.quantile(sample[:: max(1, sample.numel() // 100_000)], 0.999)) + 1e-6)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        qn, qp = self.levels()
        alpha = self.alpha.clamp(min=1e-6)
        clipped = torch.minimum(x, alpha)
        clipped = torch.maximum(clipped, -alpha) if qn else clipped.clamp(min=0)
        step = alpha / qp
        return round_ste(clipped / step) * step


@act_quantizer("dorefa")
class DoReFaAct(LazyAct):
    """DoReFa activations: clip to [0, 1] ([-1, 1] if signed) and quantize uniformly."""

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        qn, qp = self.levels()
        clipped = x.clamp(-1 if qn else 0, 1)
        return round_ste(clipped * qp) / qp


@act_quantizer("sign")
class SignAct(nn.Module):
    """Binary activations sign(x) with the hardtanh straight-through estimator (BNN)."""

    bits = 1
    per_channel = False

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> SignAct:
        return cls()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_hardtanh_ste(x)


@act_quantizer("range")
class RangeAct(nn.Module):
    """Affine unsigned grid over a range [lo, hi] (which always contains 0), per tensor.

    The range comes from calibration (`calibrate` with method minmax / percentile / mse) or, with
    method "ema", from a running average of batch min / max during training. Uses PyTorch's
    fake-quantize op; ONNX export writes the same arithmetic in float ops (`fake_quantize_float`).
    """

    per_channel = False
    METHODS = ("minmax", "percentile", "mse", "ema")

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> RangeAct:
        return cls(spec["bits"], spec.get("method", "minmax"), spec.get("percentile", 99.99))

    def __init__(self, bits: int, method: str = "minmax", percentile: float = 99.99, momentum: float = 0.1):
        super().__init__()
        if method not in self.METHODS:
            raise EffdlError(f"unknown calibration method '{method}'; choose from {', '.join(self.METHODS)}")
        self.bits, self.method, self.percentile, self.momentum = bits, method, percentile, momentum
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("ready", torch.tensor(False))
        self.observing: str | None = None  # None, "range" or "histogram" while calibrating
        self.histogram: torch.Tensor | None = None
        self.seen_min = math.inf
        self.seen_max = -math.inf

    def qparams(self) -> tuple[float, int]:
        """(scale, zero_point) of the uint grid 0..2^b-1."""
        qmax = 2**self.bits - 1
        lo, hi = min(float(self.lo), 0.0), max(float(self.hi), 0.0)
        scale = max((hi - lo) / qmax, 1e-8)
        return scale, int(min(max(round(-lo / scale), 0), qmax))

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        if self.observing == "range":
            self.seen_min = min(self.seen_min, float(x.min()))
            self.seen_max = max(self.seen_max, float(x.max()))
        else:
            hist = torch.histc(x, HISTOGRAM_BINS, self.seen_min, self.seen_max)
            self.histogram = hist if self.histogram is None else self.histogram + hist

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observe(x)
            return x
        if self.method == "ema" and self.training:
            self._update_running_range(x)
        if not bool(self.ready):
            raise EffdlError(
                "activation quantizer is not calibrated: run effdl.compress.quantize.calibrate(model, images) "
                "(or train with method 'ema') before using the model"
            )
        scale, zero_point = self.qparams()
        if torch.onnx.is_in_onnx_export():
            as_float32 = torch.tensor(scale, dtype=torch.float32), torch.tensor(float(zero_point))
            return fake_quantize_float(x.float(), *as_float32, 0, 2**self.bits - 1).to(x.dtype)
        return torch.fake_quantize_per_tensor_affine(x.float(), scale, zero_point, 0, 2**self.bits - 1).to(x.dtype)

    @torch.no_grad()
    def _update_running_range(self, x: torch.Tensor) -> None:
        lo, hi = x.detach().min().float(), x.detach().max().float()
        if not bool(self.ready):
            self.lo.copy_(lo), self.hi.copy_(hi), self.ready.fill_(True)
        else:
            self.lo.lerp_(lo, self.momentum), self.hi.lerp_(hi, self.momentum)

    @torch.no_grad()
    def finish_calibration(self) -> None:
        """Set [lo, hi] from what was observed, with this quantizer's method."""
        lo, hi = self.seen_min, self.seen_max
        if self.method == "percentile" and self.histogram is not None:
            lo, hi = self._percentile_range()
        elif self.method == "mse" and self.histogram is not None:
            lo, hi = self._mse_range()
        self.lo.fill_(lo), self.hi.fill_(hi), self.ready.fill_(True)
        self.observing, self.histogram = None, None
        self.seen_min, self.seen_max = math.inf, -math.inf

    def _bin_centers(self) -> torch.Tensor:
        edges = torch.linspace(self.seen_min, self.seen_max, HISTOGRAM_BINS + 1, dtype=torch.float64)
        return (edges[1:] + edges[:-1]) / 2

    def _percentile_range(self) -> tuple[float, float]:
        cdf = self.histogram.double().cumsum(0) / self.histogram.sum()
        centers = self._bin_centers()
        tail = 1 - self.percentile / 100
        hi = float(centers[int(torch.searchsorted(cdf, 1 - tail))].clamp(max=self.seen_max))
        lo = float(centers[int(torch.searchsorted(cdf, tail))]) if self.seen_min < 0 else self.seen_min
        return min(lo, 0.0) if self.seen_min < 0 else lo, hi

    def _mse_range(self) -> tuple[float, float]:
        """The shrunk [lo, hi] minimising the expected squared quantization error."""
        centers, counts = self._bin_centers(), self.histogram.double()
        qmax = 2**self.bits - 1
        best, best_err = (self.seen_min, self.seen_max), math.inf
        for shrink in torch.linspace(0.2, 1.0, 81).tolist():
            lo, hi = min(self.seen_min * shrink, 0.0), max(self.seen_max * shrink, 0.0)
            scale = max((hi - lo) / qmax, 1e-12)
            zero = round(-lo / scale)
            q = (torch.round(centers / scale) + zero).clamp(0, qmax)
            err = float((counts * ((q - zero) * scale - centers) ** 2).sum())
            if err < best_err:
                best, best_err = (lo, hi), err
        return best


def build_act_quantizer(spec: dict[str, Any]) -> nn.Module:
    """The activation quantizer a spec describes."""
    kind = spec.get("kind")
    if kind not in ACT_QUANTIZERS:
        raise unknown_name_error("activation quantizer kind", str(kind), ACT_QUANTIZERS)
    return ACT_QUANTIZERS[kind].from_spec(spec)
