"""Knowledge distillation: losses, a frozen teacher (one model or an ensemble), and trainer
callbacks for logit methods (KD, DKD, KD on standardized logits) and feature methods (FitNets,
attention transfer, the overhaul family), each a versioned config dispatched by `distiller`.

    from effdl.compress.distill import distiller, method_config
    callback = distiller(method_config("dkd"), student, teacher)   # Trainer(..., callbacks=[callback])

`Distillation(teacher)` is Hinton KD under its historical name (prune and quantize fine-tunes).
"""

from effdl.compress.distill.callbacks import FeatureDistillation, LogitDistillation, Teacher, renormalization
from effdl.compress.distill.kd import Distillation, check_distill_options
from effdl.compress.distill.layers import parse_layer_pairs, propose_stage_pairs, stage_outputs
from effdl.compress.distill.losses import (
    attention_loss, attention_map, dkd_loss, dkd_parts, hint_loss, kd_loss, overhaul_loss, standardize_logits,
    standardized_kd_loss,
)
from effdl.compress.distill.methods import (
    ATConfig, DKDConfig, FitNetsConfig, KDConfig, KDStdConfig, OverhaulConfig, distiller, finetune_distiller,
    is_feature_method, method_config, method_configs,
)

__all__ = [
    "ATConfig", "DKDConfig", "Distillation", "FeatureDistillation", "FitNetsConfig", "KDConfig", "KDStdConfig",
    "LogitDistillation", "OverhaulConfig", "Teacher", "attention_loss", "attention_map", "check_distill_options",
    "distiller", "dkd_loss", "finetune_distiller", "dkd_parts", "hint_loss", "is_feature_method", "kd_loss", "method_config",
    "method_configs", "overhaul_loss", "parse_layer_pairs", "propose_stage_pairs", "renormalization",
    "stage_outputs", "standardize_logits", "standardized_kd_loss",
]
