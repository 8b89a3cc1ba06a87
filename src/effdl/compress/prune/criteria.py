"""Channel importance criteria for structured pruning, as torch-pruning `Importance` objects.

An importance receives a torch-pruning group (every layer slice coupled to a set of channels,
across residual adds, concatenations, depthwise convs and BatchNorm) and returns one score per
channel; the lowest-scored channels are removed.

- `FilterNormImportance(p)`: Li et al. (2017), the Lp norm of each output filter, averaged over
  the coupled layers whose output channels are removed (input slices are not counted).
- BN scale (network slimming, Liu et al. 2017): torch-pruning's `BNScaleImportance`, |gamma|
  averaged over the group's BatchNorm layers; train with `SlimmingPenalty` first.
- `ThiNetImportance`: Luo et al. (2017). On calibration batches, sample outputs of every layer that
  consumes the channels and record each input channel's contribution to them; then greedily remove
  the channel whose removal changes the sampled outputs least (the smallest reconstruction error
  of the next layer's input), and score channels by that removal order. After pruning, each
  consumer's weights for the kept channels are rescaled by the least-squares factors that best
  rebuild the sampled outputs from the kept channels alone (the paper's last step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F

from effdl.core.modules import eval_mode
from effdl.core.registry import Registry
from effdl.errors import EffdlError, unknown_name_error

_OUT_FNS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels, tp.prune_depthwise_conv_out_channels)
_IN_FNS = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)


class FilterNormImportance(tp.importance.Importance):
    """Lp norm of the filters producing each channel (Li et al.), mean over coupled producers."""

    def __init__(self, p: int = 1, normalize: bool = False):
        self.p, self.normalize = p, normalize

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        total, count = None, 0
        for item in group:
            layer, fn = item.dep.target.module, item.dep.handler
            if fn not in _OUT_FNS or any(r is None for r in item.root_idxs):
                continue
            w = layer.weight.detach()[item.idxs].flatten(1).float()
            norms = w.abs().pow(self.p).sum(1).pow(1.0 / self.p)
            if total is None:
                total = torch.zeros(len(group[0].idxs), device=norms.device)
            total.index_add_(0, torch.as_tensor(item.root_idxs, device=norms.device), norms)
            count += 1
        if total is None:
            return None
        total /= count
        return total / total.mean().clamp_min(1e-12) if self.normalize else total


def _sample_conv_contributions(conv: nn.Conv2d, x: torch.Tensor, samples: int, g: torch.Generator) -> torch.Tensor:
    """[samples, C_in]: each input channel's share of randomly chosen output values of `conv`."""
    n, c, _, _ = x.shape
    kh, kw = conv.kernel_size
    (sh, sw), (dh, dw), (ph, pw) = conv.stride, conv.dilation, conv.padding
    x = F.pad(x, (pw, pw, ph, ph))
    out_h = (x.shape[2] - dh * (kh - 1) - 1) // sh + 1
    out_w = (x.shape[3] - dw * (kw - 1) - 1) // sw + 1
    pick = lambda high: torch.randint(0, high, (samples,), generator=g).to(x.device)  # noqa: E731
    img, row, col, out = pick(n), pick(out_h), pick(out_w), pick(conv.out_channels)
    rows = (row * sh)[:, None] + torch.arange(kh, device=x.device) * dh  # [m, kh]
    cols = (col * sw)[:, None] + torch.arange(kw, device=x.device) * dw  # [m, kw]
    chans = torch.arange(c, device=x.device)
    patches = x[img[:, None, None, None], chans[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
    return (patches * conv.weight.detach()[out]).sum((2, 3))


def _sample_linear_contributions(linear: nn.Linear, x: torch.Tensor, samples: int, g: torch.Generator) -> torch.Tensor:
    x = x.reshape(-1, x.shape[-1])
    pick = lambda high: torch.randint(0, high, (samples,), generator=g).to(x.device)  # noqa: E731
    return x[pick(x.shape[0])] * linear.weight.detach()[pick(linear.out_features)]


def greedy_removal_order(contributions: torch.Tensor) -> torch.Tensor:
    """Channel indices in ThiNet's greedy removal order for a [samples, channels] matrix.

    Each step removes the channel that keeps the sum of the removed channels' contributions
    (the error in the reconstructed outputs) smallest in squared norm.
    """
    a = contributions.double()
    n = a.shape[1]
    removed_sum = torch.zeros(a.shape[0], dtype=a.dtype, device=a.device)
    norms = a.pow(2).sum(0)
    available = torch.ones(n, dtype=torch.bool, device=a.device)
    order = []
    for _ in range(n):
        error = 2 * (removed_sum @ a) + norms
        error[~available] = float("inf")
        best = int(error.argmin())
        order.append(best)
        available[best] = False
        removed_sum += a[:, best]
    return torch.tensor(order, device=a.device)


def least_squares_scales(contributions: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """Scales w (one per kept channel) minimising |sum of all channels - kept channels @ w|^2
    over the sampled outputs of a [samples, channels] contribution matrix."""
    a = contributions.double()
    solution = torch.linalg.lstsq(a[:, keep], a.sum(1, keepdim=True)).solution
    return solution[:, 0].float()


class ThiNetImportance(tp.importance.Importance):
    """ThiNet-style channel scores from sampled contributions to the next layers' outputs.

    Build with `ThiNetImportance(model, batches)` (a few calibration batches of inputs) before the
    model changes; channels are then scored in [1/n, 1] by greedy removal order (later = more
    important). Groups with no ungrouped consumer layer fall back to the L2 filter norm.
    With `rescale`, `prune_channels` then calls `reconstruct` to rescale the consumers' kept inputs.
    """

    def __init__(self, model: nn.Module, batches: Iterable[torch.Tensor], samples_per_layer: int = 512, seed: int = 0,
                 rescale: bool = True):
        batches = list(batches)
        if not batches:
            raise EffdlError("ThiNet needs at least one calibration batch")
        self.rescale = rescale
        self.fallback = FilterNormImportance(p=2)
        self.contributions: dict[str, torch.Tensor] = {}
        self.names: dict[nn.Module, str] = {}
        g = torch.Generator().manual_seed(seed)
        per_batch = max(1, -(-samples_per_layer // len(batches)))
        samples: dict[str, list[torch.Tensor]] = {}

        def hook(name: str):
            def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], _output) -> None:
                x = inputs[0].detach().float()
                if isinstance(module, nn.Conv2d):
                    s = _sample_conv_contributions(module, x, per_batch, g)
                else:
                    s = _sample_linear_contributions(module, x, per_batch, g)
                samples.setdefault(name, []).append(s.cpu())
            return record

        handles = [
            m.register_forward_hook(hook(name))
            for name, m in model.named_modules()
            if isinstance(m, nn.Linear)
            or (isinstance(m, nn.Conv2d) and m.groups == 1 and isinstance(m.padding, tuple) and m.padding_mode == "zeros")
        ]
        try:
            with eval_mode(model), torch.no_grad():
                for batch in batches:
                    model(batch)
        finally:
            for h in handles:
                h.remove()
        self.contributions = {name: torch.cat(parts) for name, parts in samples.items()}
        self.bind(model)

    def bind(self, model: nn.Module) -> None:
        """Look layers up by name in `model` (e.g. a deep copy of the calibrated model)."""
        self.names = {m: name for name, m in model.named_modules()}

    @torch.no_grad()
    def reconstruct(self, model: nn.Module, removed_inputs: dict[str, set[int]]) -> None:
        """Rescale each sampled consumer's weights for its kept input channels by least squares.

        `removed_inputs`: consumer layer name -> input indices removed, numbered as when calibrated.
        """
        if not self.rescale:
            return
        for name, removed in removed_inputs.items():
            if name not in self.contributions:
                continue
            contrib = self.contributions[name]
            keep = [i for i in range(contrib.shape[1]) if i not in removed]
            layer = model.get_submodule(name)
            if layer.weight.shape[1] != len(keep):
                raise EffdlError(f"ThiNet calibration of layer '{name}' does not match the pruned model")
            scales = least_squares_scales(contrib, keep).to(layer.weight)
            layer.weight.mul_(scales.view(1, -1, *[1] * (layer.weight.dim() - 2)))

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        n = len(group[0].idxs)
        blocks = []
        for item in group:
            name = self.names.get(item.dep.target.module)
            if item.dep.handler not in _IN_FNS or name not in self.contributions:
                continue
            if any(r is None for r in item.root_idxs):
                continue
            contrib = self.contributions[name]
            block = torch.zeros(contrib.shape[0], n, dtype=contrib.dtype)
            block.index_add_(1, torch.as_tensor(item.root_idxs), contrib[:, list(item.idxs)])
            blocks.append(block)
        if not blocks:
            return self.fallback(group)
        order = greedy_removal_order(torch.cat(blocks))
        scores = torch.empty(n)
        scores[order] = (torch.arange(n, dtype=torch.float32) + 1) / n
        return scores


ImportanceFactory = Callable[..., tp.importance.Importance]

# criterion name -> factory(scope=, model=, calibration=) of its importance; a new criterion is one
# decorated factory (`register_criterion`) and neither `make_importance` nor any config changes.
CRITERIA: Registry = Registry("pruning criterion")  # name -> ImportanceFactory


def register_criterion(name: str) -> Callable[[ImportanceFactory], ImportanceFactory]:
    """Register `fn(*, scope, model, calibration) -> Importance` as channel criterion `name`."""
    return CRITERIA.register(name)


@register_criterion("l1")
def _l1(*, scope: str, **_: object) -> tp.importance.Importance:
    return FilterNormImportance(p=1, normalize=scope == "global")


@register_criterion("l2")
def _l2(*, scope: str, **_: object) -> tp.importance.Importance:
    return FilterNormImportance(p=2, normalize=scope == "global")


@register_criterion("bn-scale")
def _bn_scale(**_: object) -> tp.importance.Importance:
    # Slimming compares raw |gamma| across layers: the L1 penalty makes them comparable.
    return tp.importance.BNScaleImportance(normalizer=None)


@register_criterion("thinet")
def _thinet(*, model: nn.Module | None, calibration: Iterable[torch.Tensor] | None, **_: object) -> tp.importance.Importance:
    if model is None or calibration is None:
        raise EffdlError("the thinet criterion needs calibration batches")
    return ThiNetImportance(model, calibration)


def make_importance(
    criterion: str, *, scope: str, model: nn.Module | None = None, calibration: Iterable[torch.Tensor] | None = None
) -> tp.importance.Importance:
    """The importance object for a registered criterion (see module docstring); EffdlError naming
    an unknown one."""
    if criterion not in CRITERIA:
        raise unknown_name_error("pruning criterion", criterion, CRITERIA)
    return CRITERIA[criterion](scope=scope, model=model, calibration=calibration)
