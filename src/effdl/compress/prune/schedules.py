"""Pruning over time: AGP gradual sparsity, iterative prune-retrain (Han et al.), lottery tickets.

- `agp_sparsity` is the polynomial ramp of Zhu & Gupta (2017), "To prune, or not to prune":
  s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3, flat before t0 and after t1.
  `AGPCallback` applies it during training, recomputing magnitude masks every `every` steps.
- `iterative_pruning` alternates magnitude pruning and retraining with masks (Han et al. 2015);
  each round removes the same fraction of the surviving weights.
- Lottery tickets (Frankle & Carbin 2019, with rewinding by Frankle et al. 2020): snapshot early
  weights (`WeightSnapshot` during training, or any earlier state dict), train, prune by
  magnitude, then `rewind` resets the survivors to the snapshot before retraining with masks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from effdl.compress.prune.selection import check_fraction
from effdl.compress.prune.unstructured import Masks, apply_masks, magnitude_masks, prune_magnitude
from effdl.core.hooks import Callback
from effdl.errors import EffdlError


def agp_sparsity(step: int, final: float, end_step: int, *, initial: float = 0.0, start_step: int = 0,
                 power: float = 3.0) -> float:
    """Target sparsity at optimizer step `step` of an AGP ramp from `initial` to `final`."""
    if end_step <= start_step:
        raise EffdlError(f"AGP needs end_step > start_step, got {start_step}..{end_step}")
    progress = min(max((step - start_step) / (end_step - start_step), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** power


class AGPCallback(Callback):
    """Raise sparsity along the AGP ramp while training, keeping masks applied between updates.

    `end_step` defaults to 3/4 of the trainer's total steps, so the last quarter of training
    fine-tunes at the final sparsity.
    """

    def __init__(self, final_sparsity: float, *, end_step: int | None = None, start_step: int = 0,
                 initial_sparsity: float = 0.0, every: int = 10, scope: str = "global",
                 include: Iterable[str] | None = None, exclude: Iterable[str] | None = None):
        self.final = check_fraction(final_sparsity)
        self.initial = check_fraction(initial_sparsity, "initial sparsity")
        self.start_step, self.end_step, self.every = start_step, end_step, max(1, every)
        self.prune_kwargs = {"scope": scope, "include": include, "exclude": exclude}
        self.masks: Masks = {}
        self.history: list[tuple[int, float]] = []  # (step, sparsity) at each mask update

    def sparsity_at(self, step: int) -> float:
        return agp_sparsity(step, self.final, self.end_step, initial=self.initial, start_step=self.start_step)

    def _update(self, trainer) -> None:
        target = self.sparsity_at(trainer.step)
        self.masks = prune_magnitude(trainer.model, target, **self.prune_kwargs)
        self.history.append((trainer.step, target))

    def on_train_start(self, trainer) -> None:
        if self.end_step is None:
            self.end_step = max(self.start_step + 1, int(0.75 * trainer.total_steps))
        self._update(trainer)

    def on_after_step(self, trainer) -> None:
        ramping = self.start_step <= trainer.step <= self.end_step
        if ramping and (trainer.step % self.every == 0 or trainer.step == self.end_step):
            self._update(trainer)
        else:
            apply_masks(trainer.model, self.masks)
        if getattr(trainer, "ema", None) is not None:
            apply_masks(trainer.ema.module, self.masks)

    def on_train_end(self, trainer) -> None:
        # The final masks are exactly at the target, whatever the step count was.
        self.masks = prune_magnitude(trainer.model, self.final, **self.prune_kwargs)
        if getattr(trainer, "ema", None) is not None:
            apply_masks(trainer.ema.module, self.masks)


def iterative_sparsities(final: float, rounds: int) -> list[float]:
    """Sparsity after each round when every round removes the same fraction of survivors."""
    final = check_fraction(final)
    if rounds < 1:
        raise EffdlError(f"rounds must be >= 1, got {rounds}")
    return [1.0 - (1.0 - final) ** ((k + 1) / rounds) for k in range(rounds)]


def iterative_pruning(
    model: nn.Module,
    final_sparsity: float | Mapping[str, float],
    rounds: int,
    retrain: Callable[[nn.Module, Masks], None],
    **prune_kwargs,
) -> Masks:
    """Han et al.: `rounds` times, magnitude-prune to the next sparsity and `retrain(model, masks)`.

    `retrain` must keep the masks applied (train with `MaskCallback(masks)`). Per-layer targets
    (a mapping) are scaled round by round the same way as a single global fraction.
    """
    if isinstance(final_sparsity, Mapping):
        schedule = [
            {k: iterative_sparsities(v, rounds)[r] for k, v in final_sparsity.items()} for r in range(rounds)
        ]
    else:
        schedule = iterative_sparsities(final_sparsity, rounds)
    masks: Masks = {}
    for target in schedule:
        masks = prune_magnitude(model, target, **prune_kwargs)
        retrain(model, masks)
        apply_masks(model, masks)
    return masks


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of `model`'s state dict, to rewind to later."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class WeightSnapshot(Callback):
    """Take a `snapshot` of the model after optimizer step `at_step` (0: before training)."""

    def __init__(self, at_step: int = 0):
        self.at_step = at_step
        self.weights: dict[str, torch.Tensor] | None = None

    def on_train_start(self, trainer) -> None:
        if self.at_step <= trainer.step:
            self.weights = snapshot(trainer.model)

    def on_after_step(self, trainer) -> None:
        if trainer.step == self.at_step:
            self.weights = snapshot(trainer.model)


@torch.no_grad()
def rewind(model: nn.Module, early_weights: Mapping[str, torch.Tensor], masks: Masks) -> None:
    """Reset every weight (and BN statistic) to `early_weights`, then zero the pruned ones."""
    current = model.state_dict()
    missing = set(current) - set(early_weights)
    if missing:
        raise EffdlError(f"the early weights do not match the model: missing {sorted(missing)[:3]}")
    for key, tensor in current.items():
        if tensor.shape != early_weights[key].shape:
            raise EffdlError(f"early weight '{key}' has shape {tuple(early_weights[key].shape)}, "
                             f"the model {tuple(tensor.shape)}")
        tensor.copy_(early_weights[key])
    apply_masks(model, masks)


def lottery_ticket(
    model: nn.Module,
    early_weights: Mapping[str, torch.Tensor],
    sparsity: float | Mapping[str, float],
    retrain: Callable[[nn.Module, Masks], None],
    *,
    rounds: int = 1,
    **prune_kwargs,
) -> Masks:
    """From trained `model`: prune by magnitude, rewind survivors to `early_weights`, retrain.

    With `rounds > 1` this is iterative magnitude pruning with rewinding: each round prunes the
    retrained model further and rewinds again.
    """
    masks: Masks = {}
    for target in iterative_sparsities(sparsity, rounds) if not isinstance(sparsity, Mapping) else [sparsity]:
        masks = magnitude_masks(model, target, **prune_kwargs)
        rewind(model, early_weights, masks)
        retrain(model, masks)
        apply_masks(model, masks)
    return masks
