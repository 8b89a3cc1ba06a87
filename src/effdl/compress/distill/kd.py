"""Hinton et al. (2015) knowledge distillation: soften both logits with a temperature, match them.

With weight `alpha`, the batch loss becomes (1 - alpha) * label loss + alpha * kd_loss, where
kd_loss = T^2 * KL(softmax(teacher / T) || softmax(student / T)); the T^2 keeps the gradient's scale
independent of T.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from effdl.core.hooks import Callback, TrainingState
from effdl.errors import EffdlError


def check_distill_options(alpha: float, temperature: float) -> None:
    """The command-line check: a distillation weight in [0, 1] (0: off) and a positive temperature."""
    if not 0 <= alpha <= 1 or temperature <= 0:
        raise EffdlError("--distill must be in [0, 1] and --distill-temperature > 0")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """T^2 * KL(teacher || student) between temperature-softened distributions, averaged over the batch."""
    if temperature <= 0:
        raise EffdlError(f"distillation temperature must be > 0, got {temperature}")
    log_student = nn.functional.log_softmax(student_logits.float() / temperature, dim=1)
    log_teacher = nn.functional.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = nn.functional.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


class Distillation(Callback):
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
        self.teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
        self.alpha = alpha
        self.temperature = temperature
        self._forward = self.teacher

    def on_train_start(self, trainer: TrainingState) -> None:
        memory_format = torch.channels_last if trainer.channels_last else torch.contiguous_format
        self.teacher.to(trainer.device, memory_format=memory_format).eval()
        self._forward = torch.compile(self.teacher) if trainer.config.compile else self.teacher

    def extra_loss(
        self, trainer: TrainingState, images: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor
    ) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(trainer.device.type, dtype=torch.bfloat16, enabled=trainer.bf16):
            teacher_logits = self._forward(images)
        # The trainer adds this term to the label loss: adding alpha * (kd - loss) gives the mix.
        return self.alpha * (kd_loss(logits, teacher_logits, self.temperature) - loss)
