"""Knowledge distillation: a loss over teacher and student logits, and a trainer callback that uses it.

`Distillation(teacher)` plugs into any `Trainer`, so every fine-tune (after pruning, during QAT)
can learn from the uncompressed model as well as from the labels.
"""

from effdl.compress.distill.kd import Distillation, check_distill_options, kd_loss

__all__ = ["Distillation", "check_distill_options", "kd_loss"]
