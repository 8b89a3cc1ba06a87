"""Reports over training runs: a table of accuracy, complexity and scores, and the Pareto plot."""

from typing import TYPE_CHECKING

from effdl.lazy import lazy_exports

# Imported on first use (effdl.lazy): `effdl.report.pareto` alone (search plots) loads no checkpoints.
_EXPORTS = {
    "pareto_front": "effdl.report.pareto",
    "Panel": "effdl.report.plot",
    "plot_accuracy_vs_score": "effdl.report.plot",
    "plot_panels": "effdl.report.plot",
    "Report": "effdl.report.report",
    "make_report": "effdl.report.report",
    "Run": "effdl.report.runs",
    "find_runs": "effdl.report.runs",
    "load_run": "effdl.report.runs",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from effdl.report.pareto import pareto_front
    from effdl.report.plot import Panel, plot_accuracy_vs_score, plot_panels
    from effdl.report.report import Report, make_report
    from effdl.report.runs import Run, find_runs, load_run
