"""The Pareto front of (score, accuracy) points: a lower score and a higher accuracy are better."""

from __future__ import annotations

import math
from collections.abc import Sequence


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """True if `a` = (score, accuracy) is at least as good as `b` on both and better on one."""
    return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, ordered by increasing score.

    Points with a missing (None/NaN) coordinate are never on the front; identical points are
    both kept.
    """
    valid = [
        i for i, (s, a) in enumerate(points)
        if s is not None and a is not None and not (math.isnan(s) or math.isnan(a))
    ]
    front = [i for i in valid if not any(dominates(points[j], points[i]) for j in valid if j != i)]
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))
