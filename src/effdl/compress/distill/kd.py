"""Hinton et al. (2015) knowledge distillation as the fine-tuning add-on of prune and quantize.

With weight `alpha`, the batch loss becomes (1 - alpha) * label loss + alpha * kd_loss, where
kd_loss = T^2 * KL(softmax(teacher / T) || softmax(student / T)); the T^2 keeps the gradient's scale
independent of T. `Distillation(teacher)` is the `distill.kd` method's callback
(effdl.compress.distill.methods) under its historical name.
"""

from __future__ import annotations

from torch import nn

from effdl.compress.distill.callbacks import LogitDistillation
from effdl.compress.distill.losses import kd_loss
from effdl.errors import EffdlError

__all__ = ["Distillation", "check_distill_options", "kd_loss"]


def check_distill_options(alpha: float, temperature: float, method: str = "kd") -> None:
    """The command-line check: a distillation weight in [0, 1] (0: off), a positive temperature and
    a known method (effdl.compress.distill.methods.METHODS)."""
    if not 0 <= alpha <= 1 or temperature <= 0:
        raise EffdlError("--distill must be in [0, 1] and --distill-temperature > 0")
    from effdl.compress.distill.methods import method_configs
    from effdl.errors import unknown_name_error

    if method not in method_configs():
        raise unknown_name_error("distillation method", method, method_configs())


class Distillation(LogitDistillation):
    """Trainer callback: mixes the label loss with `kd_loss` against a frozen teacher on the same images.

    The teacher is copied when the callback is made (the caller's model is never moved, and may be
    compressed in place afterwards), put in eval mode, and run without gradients on each augmented
    training batch, under the trainer's autocast and, when the trainer compiles its step, compiled
    too. One callback can serve several fine-tunes (iterative pruning rounds).
    """

    def __init__(self, teacher: nn.Module, alpha: float = 0.9, temperature: float = 4.0):
        if not 0 < alpha <= 1:
            raise EffdlError(f"distillation weight alpha must be in (0, 1], got {alpha}")
        if temperature <= 0:
            raise EffdlError(f"distillation temperature must be > 0, got {temperature}")
        self.alpha = alpha
        self.temperature = temperature

        def term(student_logits, teacher_logits, targets, label_loss, progress):
            # The trainer adds this term to the label loss: adding alpha * (kd - loss) gives the mix.
            return alpha * (kd_loss(student_logits, teacher_logits, temperature) - label_loss)

        super().__init__(teacher, term, method="kd")
        # The frozen copy itself (not its Teacher wrapper), as this callback has always exposed it.
        self.teacher = self._forward = self.teacher.first
