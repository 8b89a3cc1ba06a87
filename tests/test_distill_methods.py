"""Distillation methods: each loss against a hand computation, the teacher, layer pairing, the
trainer callbacks (connectors, pruned students), `effdl distill` and its bad input."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from effdl.checkpoint import load_model, read_checkpoint_meta, save_model
from effdl.cli import main
from effdl.compress.distill import (
    Teacher, attention_loss, attention_map, distiller, dkd_loss, dkd_parts, hint_loss, kd_loss, method_config,
    method_configs, overhaul_loss, propose_stage_pairs, renormalization, stage_outputs, standardized_kd_loss,
)
from effdl.compress.distill.losses import Connector
from effdl.core.configs import config_from_dict, config_to_dict
from effdl.data import load_dataset
from effdl.errors import EffdlError
from effdl.models import create_model
from effdl.train import Trainer, make_config

pytestmark = pytest.mark.usefixtures("one_thread")


# -- logit losses --------------------------------------------------------------------------------

def test_dkd_parts_are_the_binary_and_non_target_kls_and_recompose_kd():
    torch.manual_seed(1)
    s, t, y, temp = torch.randn(1, 5), torch.randn(1, 5), torch.tensor([2]), 3.0
    p_s, p_t = torch.softmax(s / temp, 1)[0], torch.softmax(t / temp, 1)[0]
    b_s, b_t = torch.stack([p_s[2], 1 - p_s[2]]), torch.stack([p_t[2], 1 - p_t[2]])
    tckd = (b_t * (b_t / b_s).log()).sum() * temp**2
    others = [0, 1, 3, 4]
    q_s, q_t = p_s[others] / p_s[others].sum(), p_t[others] / p_t[others].sum()
    nckd = (q_t * (q_t / q_s).log()).sum() * temp**2
    got_t, got_n = dkd_parts(s, t, y, temp)
    assert got_t.item() == pytest.approx(tckd.item(), rel=1e-4)
    assert got_n.item() == pytest.approx(nckd.item(), rel=1e-4)
    # Zhao et al.'s identity: KD = TCKD + (1 - p_t(target)) * NCKD
    assert kd_loss(s, t, temp).item() == pytest.approx((tckd + (1 - p_t[2]) * nckd).item(), rel=1e-4)
    assert dkd_loss(s, t, y, alpha=0.5, beta=3.0, temperature=temp).item() == pytest.approx(
        (0.5 * tckd + 3.0 * nckd).item(), rel=1e-4)


def test_dkd_takes_soft_labels_and_vanishes_when_student_equals_teacher():
    logits = torch.randn(6, 10)
    soft = torch.softmax(torch.randn(6, 10), 1)
    tckd, nckd = dkd_parts(logits, logits, soft)
    assert tckd.item() == pytest.approx(0.0, abs=1e-5) and nckd.item() == pytest.approx(0.0, abs=1e-5)
    assert dkd_loss(torch.randn(6, 10), logits, soft) > 0


def test_standardized_kd_is_invariant_to_each_models_logit_shift_and_scale():
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    base = standardized_kd_loss(s, t, 2.0)
    shift, scale = torch.randn(8, 1) * 5, torch.rand(8, 1) * 4 + 0.25
    assert standardized_kd_loss(s * scale + shift, t * 3 - 7, 2.0).item() == pytest.approx(base.item(), rel=1e-4)
    assert standardized_kd_loss(t * 0.1 + 2, t, 2.0).item() == pytest.approx(0.0, abs=1e-5)
    assert kd_loss(t * 0.1, t, 2.0).item() > 0.1  # plain KD does ask for the teacher's logit range


# -- feature losses ------------------------------------------------------------------------------

def test_attention_maps_are_unit_norm_spatial_maps_and_ignore_channel_counts():
    feature = torch.randn(3, 7, 6, 5)
    a = attention_map(feature)
    assert a.shape == (3, 30)
    assert torch.allclose(a.norm(dim=1), torch.ones(3), atol=1e-5)
    expected = feature.pow(2).mean(1).flatten(1)
    assert torch.allclose(a, expected / expected.norm(dim=1, keepdim=True), atol=1e-6)
    assert attention_map(torch.randn(2, 4, 16, 16), size=(8, 8)).shape == (2, 64)
    # Same spatial pattern, other channel count and scale: no attention loss.
    pattern = torch.rand(2, 1, 8, 8)
    assert attention_loss(pattern.expand(2, 3, 8, 8) * 5, pattern.expand(2, 9, 8, 8)).item() == pytest.approx(0, abs=1e-7)
    assert attention_loss(torch.randn(2, 3, 16, 16), torch.randn(2, 9, 8, 8)).item() > 0
    with pytest.raises(EffdlError, match="N, C, H, W"):
        attention_map(torch.randn(2, 10))


def test_overhaul_margin_and_partial_l2_by_hand():
    t = torch.tensor([[[[2.0, -3.0, -0.5]]]])  # [1, 1, 1, 3]
    margin = torch.tensor([-1.0])
    # teacher raised to the margin: [2, -1, -0.5]; positions where s <= t and t <= 0 cost nothing
    s = torch.tensor([[[[1.0, -2.0, 0.5]]]])
    expected = (1 - 2) ** 2 + 0 + (0.5 + 0.5) ** 2
    assert overhaul_loss(s, t, margin).item() == pytest.approx(expected)
    assert overhaul_loss(torch.tensor([[[[2.0, -5.0, -0.7]]]]), t, margin).item() == pytest.approx(0.0)


def test_fitnets_connector_learns_to_map_student_channels_to_the_teachers():
    torch.manual_seed(0)
    student = torch.randn(16, 4, 8, 8)
    mixing = torch.randn(6, 4)
    teacher = nn.functional.avg_pool2d(torch.einsum("oc,nchw->nohw", mixing, student), 2)  # 6 channels, half size
    connector = Connector(tuple(student.shape), tuple(teacher.shape), batchnorm=False)
    assert connector(student).shape == teacher.shape
    optimizer = torch.optim.Adam(connector.parameters(), lr=0.05)
    first = hint_loss(connector(student), teacher).item()
    for _ in range(150):
        optimizer.zero_grad()
        loss = hint_loss(connector(student), teacher)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * first
    with pytest.raises(EffdlError, match="shapes differ"):
        hint_loss(student, teacher)


# -- teacher -------------------------------------------------------------------------------------

def test_teacher_is_a_frozen_eval_copy_and_an_ensemble_averages_logits():
    a, b = create_model("tiny_cnn"), create_model("tiny_cnn")
    teacher = Teacher([a, b])
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert a.training and all(p.requires_grad for p in a.parameters())  # the caller's models are left alone
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = (a.eval()(x) + b.eval()(x)) / 2
        assert torch.allclose(teacher(x), expected, atol=1e-5)
    with pytest.raises(EffdlError, match="empty"):
        Teacher([])


def test_teacher_renormalises_the_students_images_to_its_own_statistics():
    model = create_model("tiny_cnn").eval()
    change = renormalization([0.5] * 3, [0.25] * 3, [0.4, 0.5, 0.6], [0.2, 0.3, 0.25])
    teacher = Teacher([model], *change)
    raw = torch.rand(2, 3, 32, 32)
    student_view = (raw - 0.5) / 0.25
    teacher_view = (raw - torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.3, 0.25]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(teacher(student_view), model(teacher_view), atol=1e-4)
    assert renormalization([0.5] * 3, [0.25] * 3, [0.5] * 3, [0.25] * 3) is None


# -- layers --------------------------------------------------------------------------------------

def test_stages_of_our_resnet_and_pairs_across_families_match_spatial_sizes():
    assert [name for name, _ in stage_outputs(create_model("resnet20", width=0.25))] == ["layers.0", "layers.1", "layers.2"]
    student, teacher = create_model("tv:resnet18"), create_model("resnet20", width=0.25)
    pairs = propose_stage_pairs(student, teacher)
    # tv:resnet18 on 32x32 images works at 16x16 (stem), 8, 4, 2; resnet20 at 32, 16, 8
    assert pairs == [("relu", "layers.1"), ("layer1", "layers.2")]
    s_sizes, t_sizes = dict(stage_outputs(student)), dict(stage_outputs(teacher))
    for s, t in pairs:
        assert s_sizes[s][-2:] == t_sizes[t][-2:]


def test_torchvision_student_distills_features_from_our_teacher_through_connectors():
    student, teacher = create_model("tv:resnet18", num_classes=10), create_model("resnet20", width=0.25)
    callback = distiller(method_config("fitnets", layers=["layer1=layers.2"]), student, teacher)
    connector = callback.connectors[0]
    assert connector.project[0].in_channels == 64 and connector.project[0].out_channels == 16
    with pytest.raises(EffdlError, match="close names: layer1"):
        distiller(method_config("at", layers=["layr1=layers.2"]), student, teacher)
    with pytest.raises(EffdlError, match="teacher.*no layer 'layers.9'"):
        distiller(method_config("at", layers=["layer1=layers.9"]), student, teacher)


@pytest.mark.parametrize("options, message", [
    ({"alpha": 1.5}, r"alpha must be in \(0.0, 1.0\]"), ({"temperature": 0}, "temperature"),
])
def test_weights_out_of_range_are_one_clear_error(options, message):
    with pytest.raises(EffdlError, match=message):
        method_config("kd", **options)


def test_methods_are_versioned_configs_found_by_name():
    assert set(method_configs()) >= {"kd", "dkd", "kd-std", "fitnets", "at", "overhaul"}
    config = method_config("dkd", beta=4.0)
    assert config_from_dict(config_to_dict(config)) == config
    with pytest.raises(EffdlError, match="did you mean"):
        method_config("fitnet")
    with pytest.raises(EffdlError, match="has no option 'temperature'"):
        method_config("at", temperature=4.0)
    with pytest.raises(EffdlError):
        method_config("at", beta=0.0)


# -- callbacks in the trainer --------------------------------------------------------------------

@pytest.mark.parametrize("method", ["dkd", "kd-std", "fitnets", "at", "overhaul"])
def test_each_method_trains_a_student_and_its_connectors(method, synthetic):
    config = make_config({"dataset": "synthetic", "model": "tiny_cnn", "epochs": 1, "batch_size": 64, "lr": 0.05,
                          "progress": False, "device": "cpu"})
    teacher, student = create_model("tiny_cnn"), create_model("resnet20", width=0.25)
    callback = distiller(method_config(method), student, teacher)
    before = [p.detach().clone() for p in callback.parameters()]
    trainer = Trainer(student, synthetic, config, callbacks=[callback])
    result = trainer.fit()
    assert result.epochs == 1 and trainer.history[0]["train_loss"] == trainer.history[0]["train_loss"]  # finite
    hooks = [g for g in trainer.optimizer.param_groups if g.get("name") == "hooks"]
    if before:
        assert hooks and any(not torch.equal(b, p.detach()) for b, p in zip(before, callback.parameters()))
    else:
        assert not hooks
    assert not any(p.requires_grad for p in callback.teacher.parameters())
    assert not student._forward_hooks and not any(m._forward_hooks or m._forward_pre_hooks for m in student.modules())


def test_a_student_pruned_after_the_callback_was_made_gets_new_connectors():
    teacher = create_model("resnet20", width=0.25)
    callback = distiller(method_config("fitnets", layers=["layers.1"]), teacher, teacher)
    assert callback.connectors[0].project[0].in_channels == 8
    pruned = create_model("resnet20", width=0.125)  # as if channels were removed
    rebuilt = []
    trainer = SimpleNamespace(model=pruned, device=torch.device("cpu"), bf16=False, channels_last=False,
                              config=SimpleNamespace(compile=False), rebuild_optimizer=lambda: rebuilt.append(1))
    callback.on_train_start(trainer)
    assert rebuilt and callback.connectors[0].project[0].in_channels == 4


def test_feature_methods_refuse_an_ensemble():
    models = [create_model("tiny_cnn"), create_model("tiny_cnn")]
    with pytest.raises(EffdlError, match="one teacher"):
        distiller(method_config("at"), create_model("tiny_cnn"), models)


# -- effdl distill -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    data = load_dataset("synthetic")
    model = create_model("tiny_cnn")
    config = make_config({"dataset": "synthetic", "model": "tiny_cnn", "epochs": 2, "batch_size": 64, "lr": 0.05,
                          "progress": False, "device": "cpu"})
    Trainer(model, data, config).fit()  # records model.effdl_data: the distill run takes its dataset from it
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_model(path, model, config={"dataset": "synthetic", "model": "tiny_cnn"})
    return path


def test_cli_distill_writes_a_run_that_records_teacher_method_and_both_accuracies(teacher_checkpoint, tmp_path, capsys):
    out = tmp_path / "student"
    code = main(["distill", "--teacher", str(teacher_checkpoint), "--student", "resnet20", "--model-kwargs",
                 "{width: 0.25}", "--method", "at", "--beta", "500", "--epochs", "1", "--batch-size", "64",
                 "--device", "cpu", "--progress", "false", "--out", str(out)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "distill" and summary["dataset"] == "synthetic"
    assert summary["details"]["teachers"] == [str(teacher_checkpoint)] and summary["details"]["method"] == "at"
    assert summary["details"]["config"]["beta"] == 500.0
    assert summary["teacher_accuracy"] == printed["teacher_accuracy"] and 0 <= summary["accuracy"] <= 1
    assert summary["details"]["layers"]  # the stage pairs it chose
    model, meta = load_model(out / "best.safetensors")
    assert meta["distill"]["teacher_accuracy"] == summary["teacher_accuracy"]
    stages = [entry["stage"] for entry in read_checkpoint_meta(out / "best.safetensors")["lineage"]]
    assert stages[-1] == "distill" and meta["lineage"][-1]["source"] == str(teacher_checkpoint)
    assert "teacher" not in (out / "config.yaml").read_text()  # config.yaml stays a plain training config


def test_cli_distill_from_an_ensemble_with_a_logit_method(teacher_checkpoint, tmp_path):
    out = tmp_path / "ens"
    code = main(["distill", "--teacher", f"{teacher_checkpoint},{teacher_checkpoint}", "--student", "tiny_cnn",
                 "--method", "kd", "--epochs", "1", "--batch-size", "64", "--train-limit", "128", "--device", "cpu",
                 "--progress", "false", "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["details"]["teachers"]) == 2
    # the ensemble's accuracy is not its first file's: source_accuracy stays the source's own or none
    assert summary["source_accuracy"] is None and 0 <= summary["teacher_accuracy"] <= 1


@pytest.mark.parametrize("args, message", [
    (["--method", "fitnets", "--layers", "features.9=features.2"], "no layer 'features.9'; close names"),
    (["--method", "kd", "--alpha", "1.5"], "alpha must be in"),
    (["--method", "dkd", "--beta", "-1"], "beta must be"),
    # an option the method does not read is refused, not ignored
    (["--method", "kd", "--layers", "layers.1=layers.1"], "distillation method kd has no option 'layers'"),
    (["--method", "fitnets", "--temperature", "2"], "distillation method fitnets has no option 'temperature'"),
    (["--method", "at", "--method-options", "{margin_batches: 5}"], "at has no option 'margin_batches'"),
    # one value per option: --method-options used to win over the flag without a word
    (["--method", "kd", "--alpha", "0.5", "--method-options", "{alpha: 0.7}"],
     "--alpha and --method-options both set alpha"),
])
def test_cli_bad_input_is_one_line_before_training(teacher_checkpoint, tmp_path, capsys, args, message):
    code = main(["distill", "--teacher", str(teacher_checkpoint), "--student", "tiny_cnn", "--epochs", "1",
                 "--device", "cpu", "--progress", "false", "--out", str(tmp_path / "bad"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_cli_refuses_a_teacher_of_other_classes_and_an_empty_ensemble(teacher_checkpoint, tmp_path, capsys):
    folder = tmp_path / "folder"
    from PIL import Image

    for split in ("train", "test"):
        for name in ("cat", "dog", "fox"):
            (folder / split / name).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (32, 32), (i * 40, 80, 120)).save(folder / split / name / f"{i}.png")
    code = main(["distill", "--teacher", str(teacher_checkpoint), "--student", "tiny_cnn", "--data",
                 f"imagefolder:{folder}", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "teacher" in err and "class" in err and len(err.splitlines()) == 1
    code = main(["distill", "--teacher", ",", "--student", "tiny_cnn", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "empty" in err
    code = main(["distill", "--teacher", f"{teacher_checkpoint},", "--student", "tiny_cnn", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "an empty checkpoint path in the teacher list" in err
    assert not (tmp_path / "bad").exists()


def test_an_existing_run_is_refused_before_the_data_and_a_teacher_inside_it_is_never_replaced(
        teacher_checkpoint, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    args = ["--student", "tiny_cnn", "--epochs", "1", "--device", "cpu", "--progress", "false", "--out", str(out)]
    assert main(["distill", "--teacher", str(teacher_checkpoint), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds a run" in err and len(err.splitlines()) == 1  # no teacher evaluation before it
    inside = out / "teacher.safetensors"
    inside.write_bytes(teacher_checkpoint.read_bytes())
    assert main(["distill", "--teacher", str(inside), *args, "--overwrite"]) == 2
    assert "holds the input" in capsys.readouterr().err and inside.is_file()


def test_an_interrupted_distillation_resumes_exactly_and_only_as_a_distillation(teacher_checkpoint, tmp_path,
                                                                                  monkeypatch, capsys):
    """`effdl distill --resume`: the teacher comes back, the connectors and optimizer continue from
    last.safetensors, and the student ends bit for bit as the uninterrupted one; `effdl train
    --resume` (which would drop the teacher) and other options are refused in one line."""
    import effdl.train.run as run_module
    from effdl.checkpoint import read_checkpoint
    from effdl.core.hooks import Callback

    class StopInEpoch2(Callback):
        def on_after_step(self, trainer):
            if trainer.step == trainer.steps_per_epoch + 1:
                raise KeyboardInterrupt

    args = ["distill", "--teacher", str(teacher_checkpoint), "--student", "tiny_cnn", "--method", "fitnets",
            "--epochs", "2", "--batch-size", "64", "--device", "cpu", "--progress", "false"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    real_train = run_module.train
    monkeypatch.setattr(run_module, "train", lambda config, callbacks=None, **kw: real_train(
        config, callbacks=[*(callbacks or []), StopInEpoch2()], **kw))
    assert main([*args, "--out", str(tmp_path / "cut")]) == 130
    assert "effdl distill --resume --out" in capsys.readouterr().err
    monkeypatch.setattr(run_module, "train", real_train)
    assert main(["train", "--resume", str(tmp_path / "cut")]) == 2
    assert "resume it with `effdl distill --resume --out" in capsys.readouterr().err
    other = [{"fitnets": "at", "kd": "dkd"}.get(a, a) for a in args]
    assert main([*other, "--out", str(tmp_path / "cut"), "--resume"]) == 2
    assert "was started otherwise (method 'fitnets' -> 'at')" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    a, _ = read_checkpoint(tmp_path / "whole" / "best.safetensors")
    b, _ = read_checkpoint(tmp_path / "cut" / "best.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["kind"] == "distill"
