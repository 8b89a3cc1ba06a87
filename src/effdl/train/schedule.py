"""Learning-rate schedules as plain functions of training progress (step / total steps).

The trainer sets each parameter group's lr to `peak_lr * lr_factor(...)` before every step, so a
resumed run only needs the global step to be back on schedule.
"""

from __future__ import annotations

import math


def lr_factor(
    schedule: str,
    step: int,
    total_steps: int,
    warmup_steps: int = 0,
    milestones_steps: tuple[int, ...] = (),
    gamma: float = 0.1,
) -> float:
    """Multiplier of the peak learning rate at `step` (0-based) of `total_steps`."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "multistep":
        return gamma ** sum(step >= m for m in milestones_steps)
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "triangular":
        return 1.0 - progress
    if schedule in ("cosine", "onecycle"):
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule}")


def default_warmup_epochs(schedule: str, epochs: int, warmup_epochs: float) -> float:
    """One-cycle schedules ramp up for 20% of training unless told otherwise."""
    if warmup_epochs == 0 and schedule in ("onecycle", "triangular"):
        return 0.2 * epochs
    return warmup_epochs
