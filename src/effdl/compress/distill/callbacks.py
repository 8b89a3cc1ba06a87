"""The teacher and the trainer callbacks that distill from it (effdl.core.hooks protocol).

- `Teacher`: one model or an ensemble (logits averaged), frozen (no gradients, eval mode whatever
  `.train()` is called with), copied from the caller's models, optionally re-normalising the
  student's images to the normalisation the teacher was trained with. It is a plain module: never
  wrapped for data parallelism (each process keeps its own copy; it computes no gradients).
- `LogitDistillation`: adds a term computed from student and teacher logits.
- `FeatureDistillation`: also taps student and teacher layers by module path and adds a term over
  (connected) feature pairs; its connectors are trainable tensors the trainer optimises
  (`Callback.parameters()`).

The teacher runs on every augmented training batch without gradients, under the same bf16
autocast as the student's forward pass, and compiled when the trainer compiles its step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from effdl.compress.distill.layers import RELU_TYPES, bare_module, check_paths, feature_shapes
from effdl.core.hooks import Callback, FeatureTap, TrainingState
from effdl.errors import EffdlError

# term(student_logits, teacher_logits, targets, label_loss, progress_epochs) -> extra loss
LogitTerm = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]
# term(student_features, teacher_features, state) -> extra loss; features in pair order
FeatureTerm = Callable[[list[torch.Tensor], list[torch.Tensor], "FeatureDistillation"], torch.Tensor]


class Teacher(nn.Module):
    """A frozen teacher: `models` (one, or several whose logits are averaged), each deep-copied,
    in eval mode with `requires_grad=False`.

    `input_scale`/`input_shift` ([C] each): the teacher sees `x * scale + shift`, which turns images
    normalised with the student's data statistics into the teacher's own normalisation
    (`renormalization`). Raises EffdlError for an empty ensemble.
    """

    def __init__(self, models: Sequence[nn.Module], input_scale: Sequence[float] | None = None,
                 input_shift: Sequence[float] | None = None):
        super().__init__()
        models = list(models)
        if not models:
            raise EffdlError("the teacher ensemble is empty: give at least one teacher")
        self.members = nn.ModuleList(copy.deepcopy(bare_module(m)).eval().requires_grad_(False) for m in models)
        for name, values in (("input_scale", input_scale), ("input_shift", input_shift)):
            self.register_buffer(name, None if values is None else torch.tensor(list(values)).view(1, -1, 1, 1))
        self.train(False)

    def train(self, mode: bool = True) -> Teacher:
        """Always eval mode: BatchNorm statistics and dropout of a teacher never change."""
        return super().train(False)

    @property
    def first(self) -> nn.Module:
        """The member whose layers feature methods tap (they need a single teacher)."""
        return self.members[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            images = images * self.input_scale.to(images.dtype) + self.input_shift.to(images.dtype)
        if len(self.members) == 1:
            return self.members[0](images)
        return torch.stack([m(images).float() for m in self.members]).mean(0)


def renormalization(student_mean: Sequence[float], student_std: Sequence[float], teacher_mean: Sequence[float],
                    teacher_std: Sequence[float]) -> tuple[list[float], list[float]] | None:
    """(scale, shift) mapping images normalised as the student's data into the teacher's normalisation,
    per channel: (x * s_std + s_mean - t_mean) / t_std; None when the two agree (to 1e-6)."""
    scale = [s / t for s, t in zip(student_std, teacher_std)]
    shift = [(sm - tm) / ts for sm, tm, ts in zip(student_mean, teacher_mean, teacher_std)]
    if all(abs(a - 1) < 1e-6 for a in scale) and all(abs(b) < 1e-6 for b in shift):
        return None
    return scale, shift


def as_teacher(teacher: nn.Module | Sequence[nn.Module]) -> Teacher:
    """A `Teacher` from a Teacher (kept), one module or a list of modules (copied)."""
    if isinstance(teacher, Teacher):
        return teacher
    return Teacher([teacher] if isinstance(teacher, nn.Module) else list(teacher))


class LogitDistillation(Callback):
    """Adds `scale * term(student_logits, teacher_logits, targets, label_loss, epochs_done)` to each
    training batch's loss (`epochs_done`: fractional epochs trained so far, for warm-ups)."""

    def __init__(self, teacher: nn.Module | Sequence[nn.Module], term: LogitTerm, *, method: str, scale: float = 1.0):
        if scale <= 0:
            raise EffdlError(f"a distillation scale must be > 0, got {scale}")
        self.teacher = as_teacher(teacher)
        self.term = term
        self.method = method
        self.scale = scale
        self._forward: nn.Module = self.teacher

    def on_train_start(self, trainer: TrainingState) -> None:
        memory_format = torch.channels_last if trainer.channels_last else torch.contiguous_format
        self.teacher.to(trainer.device, memory_format=memory_format).eval()
        self._forward = torch.compile(self.teacher) if getattr(trainer.config, "compile", False) else self.teacher

    def teacher_logits(self, trainer: TrainingState, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(trainer.device.type, dtype=torch.bfloat16, enabled=trainer.bf16):
            return self._forward(images)

    @staticmethod
    def progress(trainer: TrainingState) -> float:
        steps = getattr(trainer, "steps_per_epoch", 0) or 0
        return getattr(trainer, "step", 0) / steps if steps else 0.0

    def extra_loss(self, trainer: TrainingState, images: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
                   loss: torch.Tensor) -> torch.Tensor:
        teacher_logits = self.teacher_logits(trainer, images)
        return self.scale * self.term(logits, teacher_logits, targets, loss, self.progress(trainer))


class _InputTap:
    """Like FeatureTap, but keeps each module's *input* (a copy: an in-place ReLU overwrites it), so a
    ReLU's path gives the pre-activation feature."""

    def __init__(self, model: nn.Module, paths: Iterable[str], *, detach: bool = False):
        modules = dict(model.named_modules())
        self._modules = [(p, modules[p]) for p in paths]
        self.detach = detach
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def open(self) -> dict[str, torch.Tensor]:
        if not self._handles:
            for path, module in self._modules:
                def keep(mod: nn.Module, inputs: tuple, path: str = path) -> None:
                    value = inputs[0].detach() if self.detach else inputs[0]
                    self.features[path] = value.clone()
                self._handles.append(module.register_forward_pre_hook(keep))
        return self.features

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _tap(model: nn.Module, paths: list[str], pre_activation: bool, detach: bool):
    """Output taps, or input taps for the ReLUs among `paths` when `pre_activation` (the others: outputs)."""
    if not pre_activation:
        return FeatureTap(model, paths, detach=detach)
    modules = dict(model.named_modules())
    return _MixedTap(model, [p for p in paths if isinstance(modules[p], RELU_TYPES)],
                     [p for p in paths if not isinstance(modules[p], RELU_TYPES)], detach)


class _MixedTap:
    def __init__(self, model: nn.Module, input_paths: list[str], output_paths: list[str], detach: bool):
        self.inputs = _InputTap(model, input_paths, detach=detach) if input_paths else None
        self.outputs = FeatureTap(model, output_paths, detach=detach) if output_paths else None
        self.features: dict[str, torch.Tensor] = {}

    def open(self) -> dict[str, torch.Tensor]:
        for tap in (self.inputs, self.outputs):
            if tap is not None:
                tap.open()
        return self

    def __getitem__(self, path: str) -> torch.Tensor:
        for tap in (self.inputs, self.outputs):
            if tap is not None and path in tap.features:
                return tap.features[path]
        raise KeyError(path)

    def close(self) -> None:
        for tap in (self.inputs, self.outputs):
            if tap is not None:
                tap.close()


class FeatureDistillation(LogitDistillation):
    """Distills features at `pairs` [(student path, teacher path)] through per-pair connectors.

    `student`: a model with the student's architecture (the one to train, or one built like it),
    used once to check the paths and measure the feature shapes; `input_size` (C, H, W) of that
    probe, default the model's own. `make_connector(student_shape, teacher_shape)` returns a module
    mapping one to the other, or None when the method needs none (attention transfer). `term(s, t,
    self)` gives the loss from the connected student features and the teacher's. With
    `pre_activation`, a path naming a ReLU means that ReLU's input. A student whose shapes changed
    since (pruned channels) gets new connectors when training starts.

    Raises EffdlError for an ensemble teacher (features come from one network), a path that does
    not exist (close names listed), or features that are not single tensors.
    """

    def __init__(self, teacher: nn.Module | Sequence[nn.Module], student: nn.Module,
                 pairs: Sequence[tuple[str, str]], term: FeatureTerm, *, method: str,
                 make_connector: Callable[[tuple[int, ...], tuple[int, ...]], nn.Module | None],
                 pre_activation: bool = False, input_size: Sequence[int] | None = None, scale: float = 1.0):
        super().__init__(teacher, lambda *args: torch.zeros(()), method=method, scale=scale)
        if len(self.teacher.members) > 1:
            raise EffdlError(f"{method} distills one teacher's features: give one teacher checkpoint, "
                             "or a logit method (kd, dkd, kd-std) for an ensemble")
        if not pairs:
            raise EffdlError(f"{method} needs at least one student=teacher layer pair")
        self.pairs = [tuple(p) for p in pairs]
        self.student_paths = [s for s, _ in self.pairs]
        self.teacher_paths = [t for _, t in self.pairs]
        check_paths(student, self.student_paths, "student")
        check_paths(self.teacher.first, self.teacher_paths, "teacher")
        self.feature_term = term
        self.make_connector = make_connector
        self.pre_activation = pre_activation
        self.input_size = tuple(input_size) if input_size is not None else None
        self.teacher_shapes = feature_shapes(self.teacher.first, self.teacher_paths, self.input_size)
        self.student_shapes = feature_shapes(student, self.student_paths, self.input_size)
        self.connectors = self._connectors(self.student_shapes)
        self.state: dict[str, Any] = {}  # a method's running statistics (the overhaul margin)
        self._student_tap = None
        self._tapped: nn.Module | None = None
        self._teacher_tap = None

    def _connectors(self, student_shapes: list[tuple[int, ...]]) -> nn.ModuleList:
        made = [self.make_connector(s, t) for s, t in zip(student_shapes, self.teacher_shapes)]
        return nn.ModuleList(c if c is not None else nn.Identity() for c in made)

    def parameters(self) -> Iterable[nn.Parameter]:
        return [p for p in self.connectors.parameters() if p.requires_grad]

    def on_train_start(self, trainer: TrainingState) -> None:
        super().on_train_start(trainer)
        student = bare_module(trainer.model)
        check_paths(student, self.student_paths, "student")
        shapes = feature_shapes(student, self.student_paths, self.input_size)
        if [s[1:] for s in shapes] != [s[1:] for s in self.student_shapes]:
            # The student changed since this callback was made (channels pruned): connect its new shapes.
            self.student_shapes = shapes
            self.connectors = self._connectors(shapes)
            self.connectors.to(trainer.device)
            trainer.rebuild_optimizer()
        self.connectors.to(trainer.device).train()
        self._teacher_tap = _tap(self.teacher.first, self.teacher_paths, self.pre_activation, detach=True)
        self._teacher_tap.open()

    def on_epoch_start(self, trainer: TrainingState, epoch: int) -> None:
        student = bare_module(trainer.model)
        if self._tapped is not student:  # first epoch, or another callback replaced the model
            self._close_student_tap()
            self._student_tap = _tap(student, self.student_paths, self.pre_activation, detach=False)
            self._tapped = student
        self._student_tap.open()

    def on_epoch_end(self, trainer: TrainingState, epoch: int, metrics: dict[str, Any]) -> None:
        # Closed between epochs, so copies of the model (EMA, checkpoints) never carry the hooks.
        self._close_student_tap(forget=False)

    def on_train_end(self, trainer: TrainingState) -> None:
        self._close_student_tap()
        if self._teacher_tap is not None:
            self._teacher_tap.close()

    def _close_student_tap(self, forget: bool = True) -> None:
        if self._student_tap is not None:
            self._student_tap.close()
        if forget:
            self._student_tap, self._tapped = None, None

    @staticmethod
    def _features(tap: Any, paths: list[str]) -> list[torch.Tensor]:
        source = tap if isinstance(tap, _MixedTap) else tap.features
        out = []
        for path in paths:
            value = source[path]
            if not isinstance(value, torch.Tensor):
                raise EffdlError(f"layer '{path}' did not return one tensor; name a layer that does")
            out.append(value)
        return out

    def extra_loss(self, trainer: TrainingState, images: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor,
                   loss: torch.Tensor) -> torch.Tensor:
        if self._student_tap is None:
            raise EffdlError(f"{self.method} distillation saw no student features: the trainer did not call "
                             "on_epoch_start before the batch")
        self.teacher_logits(trainer, images)  # fills the teacher's tap
        teacher_features = self._features(self._teacher_tap, self.teacher_paths)
        student_features = self._features(self._student_tap, self.student_paths)
        with torch.autocast(trainer.device.type, dtype=torch.bfloat16, enabled=trainer.bf16):
            connected = [c(f) for c, f in zip(self.connectors, student_features)]
        return self.scale * self.feature_term(connected, teacher_features, self)
