"""Distillation losses as pure functions of student and teacher tensors (no trainer, no state).

Logits: [N, K] tensors (N images, K classes); features: [N, C, H, W] maps (or [N, D] vectors for
FitNets). Every loss is computed in float32, whatever dtype autocast gave its inputs, and averaged
over the batch, so its scale does not depend on the batch size.

- `kd_loss`: Hinton, Vinyals & Dean (2015), T^2 * KL(teacher || student) at temperature T.
- `dkd_parts` / `dkd_loss`: decoupled KD, Zhao et al. (CVPR 2022): the KL splits into a target-class
  part (TCKD, binary target vs rest) and a non-target part (NCKD, among the other classes), each with
  its own weight.
- `standardized_kd_loss`: Sun et al. (CVPR 2024), "Logit standardization in KD": each row of logits
  is z-scored before the temperature, so the student matches the teacher's logit *relations*, not
  their range.
- `hint_loss`: FitNets, Romero et al. (ICLR 2015): mean squared error to the teacher's feature.
- `attention_map` / `attention_loss`: attention transfer, Zagoruyko & Komodakis (ICLR 2017).
- `overhaul_loss`: Heo et al. (ICCV 2019), "A comprehensive overhaul of feature distillation":
  partial L2 between pre-ReLU features, with the teacher's negative responses raised to a margin.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from effdl.errors import EffdlError


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise EffdlError(f"distillation temperature must be > 0, got {temperature}")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch (Hinton et al. 2015).

    The T^2 keeps the gradient's scale independent of T. Shapes [N, K]; returns a scalar.
    """
    _check_temperature(temperature)
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """Class indices [N] from labels that may be soft ([N, K] mixup/cutmix targets: their argmax)."""
    return targets if targets.ndim == 1 else targets.argmax(1)


def dkd_parts(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, temperature: float = 4.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD) of Zhao et al. (2022), each T^2-scaled and averaged over the batch.

    TCKD = KL(b_teacher || b_student) with b = [p_target, 1 - p_target] (the binary "right class or
    not" distribution); NCKD = KL(q_teacher || q_student) with q the softmax over the non-target
    classes only. Their identity: per image, KD = TCKD + (1 - p_target_teacher) * NCKD, which is why
    classic KD under-weights NCKD exactly when the teacher is confident. `targets`: [N] indices or
    [N, K] soft labels (their argmax is the target class).
    """
    _check_temperature(temperature)
    s, t = student_logits.float() / temperature, teacher_logits.float() / temperature
    target = F.one_hot(hard_labels(targets), s.shape[1]).bool()
    p_s, p_t = F.softmax(s, dim=1), F.softmax(t, dim=1)
    eps = 1e-12
    pt_s = (p_s * target).sum(1).clamp(eps, 1 - eps)
    pt_t = (p_t * target).sum(1).clamp(eps, 1 - eps)
    tckd = pt_t * (pt_t.log() - pt_s.log()) + (1 - pt_t) * ((1 - pt_t).log() - (1 - pt_s).log())
    # The softmax over the other classes: the target's logit pushed to -inf (a large negative, safe in fp32).
    masked = torch.finfo(torch.float32).min / 2
    log_q_s = F.log_softmax(s.masked_fill(target, masked), dim=1)
    log_q_t = F.log_softmax(t.masked_fill(target, masked), dim=1)
    nckd = (log_q_t.exp() * (log_q_t - log_q_s)).masked_fill(target, 0.0).sum(1)
    scale = temperature**2
    return tckd.mean() * scale, nckd.mean() * scale


def dkd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, *,
    alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
) -> torch.Tensor:
    """alpha * TCKD + beta * NCKD (Zhao et al. 2022; their CIFAR-100 setting: alpha 1, beta 8, T 4)."""
    tckd, nckd = dkd_parts(student_logits, teacher_logits, targets, temperature)
    return alpha * tckd + beta * nckd


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Each row z-scored: (z - mean(z)) / std(z) over the K classes (Sun et al. 2024)."""
    logits = logits.float()
    mean = logits.mean(1, keepdim=True)
    std = logits.std(1, keepdim=True, unbiased=False)
    return (logits - mean) / (std + eps)


def standardized_kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0
) -> torch.Tensor:
    """`kd_loss` between z-scored logits (Sun et al. 2024): invariant to adding a constant to a row of
    either model's logits, or multiplying it by a positive factor."""
    return kd_loss(standardize_logits(student_logits), standardize_logits(teacher_logits), temperature)


def hint_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Mean squared error between a (connected) student feature and the teacher's, same shape."""
    if student_feature.shape != teacher_feature.shape:
        raise EffdlError(f"hint shapes differ: student {tuple(student_feature.shape)}, "
                         f"teacher {tuple(teacher_feature.shape)} (a connector should have matched them)")
    return F.mse_loss(student_feature.float(), teacher_feature.float())


def attention_map(feature: torch.Tensor, p: float = 2.0, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Spatial attention of a [N, C, H, W] feature (Zagoruyko & Komodakis 2017): mean over channels
    of |a|^p, flattened to [N, H*W] and L2-normalised per image. `size`: resize the [H, W] map first
    (bilinear), so stages of different resolution can be compared; channels never need to match."""
    if feature.ndim != 4:
        raise EffdlError(f"attention transfer needs [N, C, H, W] features, got shape {tuple(feature.shape)}")
    spatial = feature.float().abs().pow(p).mean(1, keepdim=True)
    if size is not None and tuple(spatial.shape[-2:]) != tuple(size):
        spatial = F.interpolate(spatial, size=size, mode="bilinear", align_corners=False)
    return F.normalize(spatial.flatten(1), dim=1)


def attention_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Mean squared difference of the two attention maps, the student's brought to the teacher's
    resolution (the per-pair term of the paper's sum, averaged over positions and images)."""
    teacher_map = attention_map(teacher_feature, p)
    student_map = attention_map(student_feature, p, size=tuple(teacher_feature.shape[-2:]))
    return (student_map - teacher_map).pow(2).mean()


def overhaul_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Heo et al.'s partial L2 between pre-ReLU features [N, C, H, W], summed over C, H, W and
    averaged over the batch (their normalisation).

    The teacher's feature is raised to `margin` ([C], negative: the expected value of its negative
    responses); where the teacher is negative (would be cut by its ReLU) and the student is already
    below it, there is no loss, so the student is only asked to be "negative enough" there.
    """
    t = torch.maximum(teacher_feature.float(), margin.float().view(1, -1, 1, 1))
    s = student_feature.float()
    mask = (s > t) | (t > 0)
    return ((s - t).pow(2) * mask).sum() / s.shape[0]


def negative_mean(feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel of a [N, C, ...] feature: (sum of its negative values, how many), for the margin
    E[x | x < 0] of `overhaul_loss`, accumulated over batches."""
    x = feature.detach().float().transpose(0, 1).flatten(1)
    negative = x.clamp(max=0)
    return negative.sum(1), (x < 0).sum(1).float()


class Connector(nn.Module):
    """Learned map from a student feature to the teacher's shape: a 1x1 convolution (a linear layer
    for [N, D] features) from student to teacher channels, optionally with BatchNorm, then a spatial
    resize (average pooling down, bilinear up) when the two resolutions differ."""

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], *, batchnorm: bool = True):
        super().__init__()
        if len(student_shape) != len(teacher_shape) or len(student_shape) not in (2, 4):
            raise EffdlError(f"cannot connect a student feature of shape {list(student_shape)} to a teacher "
                             f"feature of shape {list(teacher_shape)}: both must be [N, C, H, W] or [N, D]")
        self.student_shape, self.teacher_shape = tuple(student_shape[1:]), tuple(teacher_shape[1:])
        c_in, c_out = student_shape[1], teacher_shape[1]
        if len(student_shape) == 4:
            layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 1, bias=not batchnorm)]
            if batchnorm:
                layers.append(nn.BatchNorm2d(c_out))
        else:
            layers = [nn.Linear(c_in, c_out, bias=not batchnorm)]
            if batchnorm:
                layers.append(nn.BatchNorm1d(c_out))
        self.project = nn.Sequential(*layers)
        self.size = tuple(teacher_shape[2:]) if len(teacher_shape) == 4 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(x)
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            if x.shape[-2] >= self.size[0] and x.shape[-1] >= self.size[1]:
                x = F.adaptive_avg_pool2d(x, self.size)
            else:
                x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x
