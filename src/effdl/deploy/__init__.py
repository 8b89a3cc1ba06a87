"""Deployment: ONNX export, verification against PyTorch, and ONNX Runtime sessions."""

from effdl.deploy.onnx import check_onnx, export_onnx, onnx_model, ort_session, save_onnx

__all__ = ["check_onnx", "export_onnx", "onnx_model", "ort_session", "save_onnx"]
