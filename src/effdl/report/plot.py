"""The accuracy-against-score plot: every run, the accuracy threshold, the Pareto front.

Runs on different datasets are never compared: `plot_panels` draws one panel per dataset, each
with its own front and threshold. Run labels are placed beside their points where they overlap
neither another label nor a point (the first free spot of a few offsets around the point), and
the legend sits outside the axes, so nothing covers a point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from effdl.report.pareto import pareto_front

# Label offsets from the point (points), tried in order: beside first, then above/below, then farther.
_OFFSETS = [(5, 4, "left", "bottom"), (5, -4, "left", "top"), (-5, 4, "right", "bottom"),
            (-5, -4, "right", "top"), (0, 8, "center", "bottom"), (0, -8, "center", "top"),
            (10, 0, "left", "center"), (-10, 0, "right", "center")]
# Then rows above and below, farther and farther (a label 8 pt high needs about 11 pt per row),
# joined to their point by a leader line.
_OFFSETS += [(sx * 6, sy * (4 + 11 * row), "left" if sx > 0 else "right", "bottom" if sy > 0 else "top")
             for row in range(1, 9) for sy in (1, -1) for sx in (1, -1)]
_POINT_RADIUS_PT = 3.5  # a default scatter marker (6 pt across), with a little room


@dataclass
class Panel:
    """One panel of the plot: the runs of one dataset."""

    scores: Sequence[float]
    accuracies: Sequence[float]  # fractions in [0, 1]
    labels: Sequence[str] | None = None
    threshold: float | None = None  # a fraction
    score_label: str = "score"
    title: str | None = None
    full_split: Sequence[bool] | None = None  # False: accuracy measured on a test subset (never on the front)


def _overlap(box: Bbox, others: list[Bbox]) -> float:
    total = 0.0
    for other in others:
        w = min(box.x1, other.x1) - max(box.x0, other.x0)
        h = min(box.y1, other.y1) - max(box.y0, other.y0)
        if w > 0 and h > 0:
            total += w * h
    return total


def text_extent(annotation, renderer) -> Bbox:
    """Where an annotation's text is drawn, in display pixels (without its leader line)."""
    annotation.update_positions(renderer)
    return Text.get_window_extent(annotation, renderer)


def place_labels(ax: Axes, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], fontsize: int = 8) -> list:
    """Annotate each point (xs[i], ys[i]) with labels[i] at the first offset whose text overlaps no
    point and no label placed before it (else the least overlapping one); labels set farther than
    beside their point get a leader line.
    Call after the axes' limits are final. Returns the annotations."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    ax.autoscale_view()
    to_px = ax.transData.transform
    axes_box = ax.get_window_extent(renderer)
    r = _POINT_RADIUS_PT * fig.dpi / 72
    taken = [Bbox.from_extents(px - r, py - r, px + r, py + r) for px, py in (to_px((x, y)) for x, y in zip(xs, ys))]
    annotations = []
    for i in sorted(range(len(labels)), key=lambda i: (xs[i], -ys[i])):
        best = None
        for dx, dy, ha, va in _OFFSETS:
            ann = ax.annotate(labels[i], (xs[i], ys[i]), textcoords="offset points", xytext=(dx, dy),
                              ha=ha, va=va, fontsize=fontsize)
            box = text_extent(ann, renderer)
            outside = box.width * box.height - _overlap(box, [axes_box])  # text leaving the axes
            cost = _overlap(box, taken) + outside
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, ann, box, (dx, dy))
            else:
                ann.remove()
            if cost == 0:
                break
        cost, ann, box, offset = best
        if cost > 0 or abs(offset[0]) + abs(offset[1]) > 20:
            ann.remove()
            ann = ax.annotate(labels[i], (xs[i], ys[i]), textcoords="offset points", xytext=offset,
                              ha=ann.get_ha(), va=ann.get_va(), fontsize=fontsize,
                              arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6})
        taken.append(box)
        annotations.append(ann)
    return annotations


def _draw(ax: Axes, panel: Panel) -> None:
    scores, accuracies = list(panel.scores), list(panel.accuracies)
    full = list(panel.full_split) if panel.full_split is not None else [True] * len(scores)
    front = pareto_front([(s, a) if f else (s, float("nan")) for s, a, f in zip(scores, accuracies, full)])
    ax.scatter([s for s, f in zip(scores, full) if f], [100 * a for a, f in zip(accuracies, full) if f],
               color="tab:gray", label="runs (full test split)", zorder=2)
    if not all(full):
        ax.scatter([s for s, f in zip(scores, full) if not f], [100 * a for a, f in zip(accuracies, full) if not f],
                   facecolors="none", edgecolors="tab:gray", label="runs (test subset: not on the front)", zorder=2)
    if front:
        ax.plot([scores[i] for i in front], [100 * accuracies[i] for i in front], "o-", drawstyle="steps-post",
                color="tab:red", label="Pareto front", zorder=3)
    if panel.threshold is not None:
        ax.axhline(100 * panel.threshold, color="tab:blue", linestyle="--",
                   label=f"threshold {100 * panel.threshold:g}%")
    positive = [s for s in scores if s > 0]
    if positive and max(positive) / min(positive) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(f"{panel.score_label} (lower is better)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(panel.title or f"accuracy against {panel.score_label}")
    ax.grid(True, alpha=0.3)
    ax.margins(0.12)  # room for labels at the edges
    if panel.labels:
        place_labels(ax, scores, [100 * a for a in accuracies], list(panel.labels))
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize=8)


def plot_panels(panels: Sequence[Panel], path: str | Path) -> Path:
    """Write a PNG with one accuracy-against-score panel per entry of `panels` (stacked); returns the path."""
    # A bare Figure on the Agg canvas: no pyplot state, no display needed, the caller's backend untouched.
    fig = Figure(figsize=(7, 4.5 * len(panels)), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    fig.subplots_adjust(hspace=0.35)
    for ax, panel in zip(axes, panels):
        _draw(ax, panel)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


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
    `threshold` (a fraction) as a horizontal line. All points are compared with each other: give
    runs of one dataset (`plot_panels` draws several datasets apart). Returns the path.
    """
    return plot_panels([Panel(scores, accuracies, labels, threshold, score_label, title)], path)
