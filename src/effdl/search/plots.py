"""PNG plots of studies (matplotlib's Agg canvas, as effdl.report.plot): per-epoch curves,
parameter importance, and the Pareto plot of an architecture search with its constraint lines."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from effdl.report.pareto import pareto_front

_STATE_STYLE = {"complete": ("-", 1.0), "pruned": ("--", 0.6), "fail": (":", 0.5)}


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_curves(curves: dict[int, tuple[Sequence[float], str]], path: str | Path, *, title: str = "") -> Path:
    """Per-epoch validation accuracy (%) of each trial: solid completed, dashed pruned, dotted failed."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for number, (curve, state) in sorted(curves.items()):
        if not curve:
            continue
        style, alpha = _STATE_STYLE.get(state, ("-", 0.8))
        ax.plot(range(1, len(curve) + 1), [100 * v for v in curve], style, alpha=alpha, marker=".",
                label=f"trial {number} ({state})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title or "per-epoch curves")
    ax.grid(alpha=0.3)
    if len(curves) <= 20:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


def plot_importance(importance: dict[str, float], path: str | Path, *, title: str = "") -> Path:
    """Horizontal bars of each parameter's importance (fractions summing to 1)."""
    names = list(importance)[::-1]
    fig = Figure(figsize=(6, 0.5 + 0.4 * len(names)))
    ax = fig.add_subplot()
    ax.barh(names, [importance[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (optuna.importance, PED-ANOVA)")
    ax.set_title(title or "parameter importance")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_pareto(points: Sequence[dict[str, Any]], path: str | Path, *, x_label: str,
                x_limit: float | None = None, notes: Sequence[str] = (), title: str = "") -> Path:
    """Accuracy (%) against a cost (x) for every trial: trained ones as dots (the front joined by a
    line, the fully trained front as stars), infeasible ones as grey crosses at the bottom, and the
    constraint on x as a vertical line; other constraints are listed under the title.

    `points`: dicts with x, accuracy (None when never trained), state, label, full_accuracy (optional).
    """
    fig = Figure(figsize=(7.5, 5))
    ax = fig.add_subplot()
    trained = [p for p in points if p.get("accuracy") is not None]
    infeasible = [p for p in points if p.get("accuracy") is None]
    if trained:
        ax.scatter([p["x"] for p in trained], [100 * p["accuracy"] for p in trained], s=18, label="proxy accuracy")
        front = pareto_front([(p["x"], p["accuracy"]) for p in trained])
        front_points = sorted((trained[i] for i in front), key=lambda p: p["x"])
        ax.plot([p["x"] for p in front_points], [100 * p["accuracy"] for p in front_points], "-", color="tab:orange",
                label="Pareto front (proxy)")
    full = [p for p in points if p.get("full_accuracy") is not None]
    if full:
        ax.scatter([p["x"] for p in full], [100 * p["full_accuracy"] for p in full], marker="*", s=90,
                   color="tab:green", label="full training")
        for p in full:
            ax.annotate(p.get("label", ""), (p["x"], 100 * p["full_accuracy"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
    if infeasible:
        ax.scatter([p["x"] for p in infeasible], [0.0] * len(infeasible), marker="x", color="grey", alpha=0.6,
                   label="infeasible (never trained)")
    if x_limit is not None:
        ax.axvline(x_limit, color="tab:red", linestyle="--", label=f"constraint: {x_label} <= {x_limit:.4g}")
    ax.set_xlabel(x_label)
    ax.set_ylabel("accuracy (%)")
    ax.set_title((title or "architecture search") + ("\n" + "; ".join(notes) if notes else ""), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)
