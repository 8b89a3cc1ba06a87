"""Measurement: accuracy, complexity counting, scores, latency and size."""

from effdl.measure.accuracy import Accuracy, evaluate

__all__ = ["Accuracy", "evaluate"]
