"""The accuracy-against-score plot: every run, the accuracy threshold, the Pareto front."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from effdl.report.pareto import pareto_front


def plot_accuracy_vs_score(
    scores: Sequence[float],
    accuracies: Sequence[float],
    path: str | Path,
    *,
    labels: Sequence[str] | None = None,
    threshold: float | None = None,
    score_label: str = "score",
    title: str | None = None,
) -> Path:
    """Write a PNG of accuracy (fraction in [0, 1], shown in %) against score to `path`.

    The Pareto front (lower score, higher accuracy) is drawn as a line through its points, and
    `threshold` (a fraction) as a horizontal line. Returns the path.
    """
    points = list(zip(scores, accuracies))
    front = pareto_front(points)
    # A bare Figure on the Agg canvas: no pyplot state, no display needed, the caller's backend untouched.
    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.scatter(scores, [100 * a for a in accuracies], color="tab:gray", label="runs", zorder=2)
    if front:
        ax.plot([scores[i] for i in front], [100 * accuracies[i] for i in front], "o-", drawstyle="steps-post",
                color="tab:red", label="Pareto front", zorder=3)
    if threshold is not None:
        ax.axhline(100 * threshold, color="tab:blue", linestyle="--", label=f"threshold {100 * threshold:g}%")
    for i, label in enumerate(labels or []):
        ax.annotate(label, (scores[i], 100 * accuracies[i]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    positive = [s for s in scores if s > 0]
    if positive and max(positive) / min(positive) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(f"{score_label} (lower is better)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or f"accuracy against {score_label}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path
