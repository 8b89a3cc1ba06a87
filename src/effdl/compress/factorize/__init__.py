"""Factorization: trained layers replaced by chains of smaller real layers (low rank, separable).

Importing this package registers the `factorize` checkpoint replay and the factorize configs
(`SVDConfig`, `SpatialSVDConfig`, `Tucker2Config`, `CPConfig`, `DepthwiseConfig`,
`GroupedConfig`), applied by the one verb `factorize_(model, config, selection=, calibration=)`.
The tensor mathematics (SVD, Tucker-2, CP via tensorly, least-squares fits, VBMF) is in
`decompose`; the modules and their replay in `layers`; per-method rules in `methods`.
"""

from effdl.compress.factorize.configs import (
    METHOD_CONFIGS,
    CPConfig,
    DepthwiseConfig,
    FactorizeReport,
    GroupedConfig,
    LayerFactorization,
    SpatialSVDConfig,
    SVDConfig,
    Tucker2Config,
    factorize_,
    factorize_sensitivity,
)
from effdl.compress.factorize.decompose import vbmf_rank
from effdl.compress.factorize.layers import Factorized

__all__ = [
    "CPConfig", "DepthwiseConfig", "FactorizeReport", "Factorized", "GroupedConfig", "LayerFactorization",
    "METHOD_CONFIGS", "SVDConfig", "SpatialSVDConfig", "Tucker2Config", "factorize_", "factorize_sensitivity",
    "vbmf_rank",
]
