"""Deployment: ONNX export, verification against PyTorch, and ONNX Runtime sessions."""

from effdl.deploy.onnx import (
    OnnxCheck,
    check_onnx,
    export_onnx,
    export_verified,
    onnx_model,
    ort_session,
    read_metadata,
    save_onnx,
    verify_onnx,
)

__all__ = ["OnnxCheck", "check_onnx", "export_onnx", "export_verified", "onnx_model", "ort_session", "read_metadata",
           "save_onnx", "verify_onnx"]
