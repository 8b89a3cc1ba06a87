"""Measurement: accuracy, complexity counting, scores, latency and size."""

from effdl.measure.accuracy import Accuracy, evaluate, evaluate_onnx
from effdl.measure.counting import LayerRecord, ModelProfile, ParamRecord, profile
from effdl.measure.scoring import ScoreResult, score

__all__ = [
    "Accuracy", "LayerRecord", "ModelProfile", "ParamRecord", "ScoreResult",
    "evaluate", "evaluate_onnx", "profile", "score",
]
