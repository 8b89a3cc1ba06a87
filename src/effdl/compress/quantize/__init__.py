"""Quantization: post-training (fp16/bf16, int8), quantization-aware training, binary/ternary
weights, k-means weight sharing, BatchNorm folding and per-layer sensitivity scans.

One verb, `quantize_(model, config)`, with a config per technique (see config.py). Every
structural change is recorded so checkpoints reload the quantized model.
"""

from effdl.compress.quantize.api import (
    QuantizationCallback,
    calibrate,
    calibration_images,
    clip_latent_weights_,
    is_quantized,
    quantization_config,
    quantize_,
    quantized_layers,
    to_half_,
    verify_model_bits,
)
from effdl.compress.quantize.config import (
    BinaryConnectConfig,
    FakeQuantConfig,
    Float16Config,
    Int8StaticConfig,
    Int8WeightOnlyConfig,
    KMeansConfig,
    TernaryConfig,
    XnorConfig,
)
from effdl.compress.quantize.fold import fold_batchnorm
from effdl.compress.quantize.layers import QuantConv2d, QuantLinear
from effdl.compress.quantize.sensitivity import (
    LayerSensitivity,
    SensitivityScan,
    plot_sensitivity,
    sensitivity_scan,
    sensitivity_table,
)

__all__ = [
    "BinaryConnectConfig",
    "FakeQuantConfig",
    "Float16Config",
    "Int8StaticConfig",
    "Int8WeightOnlyConfig",
    "KMeansConfig",
    "LayerSensitivity",
    "QuantConv2d",
    "QuantLinear",
    "QuantizationCallback",
    "SensitivityScan",
    "TernaryConfig",
    "XnorConfig",
    "calibrate",
    "calibration_images",
    "clip_latent_weights_",
    "fold_batchnorm",
    "is_quantized",
    "plot_sensitivity",
    "quantization_config",
    "quantize_",
    "quantized_layers",
    "sensitivity_scan",
    "sensitivity_table",
    "to_half_",
    "verify_model_bits",
]
