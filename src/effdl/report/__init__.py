"""Reports over training runs: a table of accuracy, complexity and scores, and the Pareto plot."""

from effdl.report.pareto import pareto_front
from effdl.report.plot import Panel, plot_accuracy_vs_score, plot_panels
from effdl.report.report import Report, make_report
from effdl.report.runs import Run, find_runs, load_run

__all__ = ["Panel", "Report", "Run", "find_runs", "load_run", "make_report", "pareto_front", "plot_accuracy_vs_score", "plot_panels"]
