"""Knowledge distillation: the KD loss's definition and the trainer callback's effect."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from effdl.compress.distill import Distillation, kd_loss
from effdl.data import BatchLoader, load_dataset
from effdl.errors import EffdlError
from effdl.measure import evaluate
from effdl.models import create_model
from effdl.train import Trainer, make_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_kd_loss_is_temperature_scaled_kl_from_teacher_to_student():
    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    t = 3.0
    p_teacher = torch.softmax(teacher / t, dim=1)
    expected = (p_teacher * (p_teacher.log() - torch.log_softmax(student / t, dim=1))).sum(1).mean() * t * t
    assert kd_loss(student, teacher, t).item() == pytest.approx(expected.item(), rel=1e-5)
    assert kd_loss(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(student, teacher, t) > 0


def test_kd_loss_gradient_moves_the_student_towards_the_teacher():
    teacher = torch.randn(16, 10)
    student = torch.randn(16, 10, requires_grad=True)
    before = kd_loss(student, teacher).item()
    kd_loss(student, teacher).backward()
    with torch.no_grad():
        student -= 1.0 * student.grad
    assert kd_loss(student, teacher).item() < before


@pytest.mark.parametrize("kwargs", [{"alpha": 0.0}, {"alpha": 1.5}, {"temperature": 0.0}])
def test_bad_distillation_settings_are_clear_errors(kwargs):
    with pytest.raises(EffdlError):
        Distillation(nn.Linear(2, 2), **kwargs)


def test_callback_mixes_label_and_distillation_losses():
    teacher = create_model("tiny_cnn").eval()  # the callback's teacher runs in eval mode
    cb = Distillation(teacher, alpha=0.75, temperature=2.0)
    trainer = SimpleNamespace(device=torch.device("cpu"), bf16=False, channels_last=False,
                              config=SimpleNamespace(compile=False))
    cb.on_train_start(trainer)
    images, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    logits = create_model("tiny_cnn")(images)
    label_loss = nn.functional.cross_entropy(logits, targets)
    total = label_loss + cb.extra_loss(trainer, images, targets, logits, label_loss)
    expected = 0.25 * label_loss + 0.75 * kd_loss(logits, teacher(images), 2.0)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert not any(p.requires_grad for p in cb.teacher.parameters())
    assert all(p.requires_grad for p in teacher.parameters())  # the caller's model is left alone


def test_a_student_taught_only_by_the_teacher_learns_the_teacher_not_the_labels():
    data = load_dataset("synthetic")
    # 12 epochs, not 6: measured on the AMD EPYC dev machine over seeds 0-4 with bf16 on and off,
    # 6 epochs left the taught student at 0.34-0.60 (under the 0.5 bar for 4 of 5 seeds) and the
    # teacher at 0.89-1.0; 12 give teacher 1.0, control <= 0.0, taught >= 0.98: wide margins on any CPU.
    config = make_config({"dataset": "synthetic", "model": "tiny_cnn", "epochs": 12, "batch_size": 64, "lr": 0.05,
                          "progress": False, "device": "cpu", "augment": {"crop_padding": 0, "flip": False}})
    teacher = create_model("tiny_cnn")
    Trainer(teacher, data, config).fit()
    # Labels rotated by one class: a student that follows them disagrees with the teacher everywhere.
    wrong = dataclasses.replace(data, train_labels=(data.train_labels + 1) % data.num_classes)
    taught, control = create_model("tiny_cnn"), create_model("tiny_cnn")
    Trainer(taught, wrong, config, callbacks=[Distillation(teacher, alpha=1.0, temperature=2.0)]).fit()
    Trainer(control, wrong, config).fit()
    loader = BatchLoader.for_split(data, "test", batch_size=256)
    assert evaluate(teacher, loader).top1 > 0.9
    assert evaluate(control, loader).top1 < 0.2  # it learned the rotated labels
    assert evaluate(taught, loader).top1 > 0.5  # it learned the teacher's answers instead
