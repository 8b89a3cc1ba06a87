import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from effdl import EffdlError, create_model
from effdl.checkpoint import load_model, read_checkpoint, split_namespace
from effdl.data.datasets import synthetic_dataset
from effdl.errors import Interrupted
from effdl.train import Callback, NonFiniteLoss, Trainer, make_config
from effdl.train.schedule import lr_factor


def quick_config(**overrides):
    base = dict(dataset="synthetic", model="resnet20", model_kwargs={"width": 0.25}, epochs=2,
                batch_size=64, lr=0.05, progress=False, bf16=False)
    return make_config({**base, **overrides})


def small_model():
    return create_model("resnet20", width=0.25)


def test_training_learns_and_writes_a_complete_run_dir(tmp_path):
    # 4 well-separated classes and 64 steps (batch 32): enough steps for BatchNorm's running
    # statistics to settle, so the test accuracy does not hinge on a CPU's rounding. Measured on an
    # AMD EPYC (AVX-512), seeds 0-4 x bf16 on/off: minimum 0.996 (chance 0.25). The 10-class,
    # 32-step version of this test ranged 0.19-0.55 over the same seeds.
    data = synthetic_dataset(num_classes=4)
    config = quick_config(epochs=4, lr=0.05, batch_size=32)
    trainer = Trainer(create_model("resnet20", num_classes=4, width=0.25), data, config, run_dir=tmp_path / "run")
    result = trainer.fit()
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.jsonl", "best.safetensors",
                                               "last.safetensors", "summary.json"}
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    assert trainer.history == metrics  # the same per-epoch record, in memory
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert result.accuracy > 0.6  # chance is 0.25; measured minimum 0.996 (see above)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["correct"] == result.correct and summary["total"] == 256
    assert summary["kind"] == "train" and summary["selected_on"] == "last_epoch"
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 4
    best, meta = load_model(run / "best.safetensors")
    assert meta["config"]["model"] == "resnet20"


def test_cpu_runs_are_repeatable(synthetic):
    weights = []
    for _ in range(2):
        torch.manual_seed(123)  # model init is the caller's; the trainer seeds data and steps
        model = small_model()
        Trainer(model, synthetic, quick_config(epochs=1)).fit()
        weights.append(model.fc.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_interrupted_run_resumes_to_the_same_weights(synthetic, tmp_path):
    torch.manual_seed(1)
    reference = small_model()
    init = {k: v.clone() for k, v in reference.state_dict().items()}
    Trainer(reference, synthetic, quick_config(epochs=2)).fit()

    class InterruptAt(Callback):
        def on_after_step(self, trainer):
            if trainer.step == 11:  # mid-way through epoch 2 (8 steps per epoch)
                raise KeyboardInterrupt

    model = small_model()
    model.load_state_dict(init)
    trainer = Trainer(model, synthetic, quick_config(epochs=2), callbacks=[InterruptAt()], run_dir=tmp_path / "r")
    with pytest.raises(Interrupted):  # a KeyboardInterrupt, not an EffdlError: the CLI exits 130
        trainer.fit()

    resumed_model = small_model()
    resumed = Trainer(resumed_model, synthetic, quick_config(epochs=2), run_dir=tmp_path / "r")
    resumed.resume(tmp_path / "r" / "last.safetensors")
    assert resumed.step == 11 and resumed.epoch == 1
    resumed.fit()
    for key, value in reference.state_dict().items():
        assert torch.allclose(value.float(), resumed_model.state_dict()[key].float(), atol=1e-5), key
    # Each epoch logged once; the resumed epoch's line covers the whole epoch, not zeros.
    metrics = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(m["train_loss"] > 0 and m["images_per_s"] > 0 for m in metrics)


def test_a_ctrl_c_inside_a_step_resumes_exactly(synthetic, tmp_path):
    """SIGINT arriving in the middle of a step (the forward pass has moved the BatchNorm statistics,
    the optimizer has not stepped) stops after that step, so the resumed run is the uninterrupted one."""
    import os
    import signal

    def model_with(at):  # sends Ctrl-C to this process right after its at-th training BatchNorm forward
        torch.manual_seed(1)
        model = small_model()
        calls = []

        def hook(module, inputs, output):
            if module.training:
                calls.append(1)
                if len(calls) == at:
                    os.kill(os.getpid(), signal.SIGINT)

        model.bn1.register_forward_hook(hook)
        return model

    reference = model_with(None)
    Trainer(reference, synthetic, quick_config(epochs=2)).fit()
    with pytest.raises(Interrupted):
        Trainer(model_with(11), synthetic, quick_config(epochs=2), run_dir=tmp_path / "r").fit()
    resumed_model = model_with(None)
    resumed = Trainer(resumed_model, synthetic, quick_config(epochs=2), run_dir=tmp_path / "r")
    resumed.resume(tmp_path / "r" / "last.safetensors")
    assert resumed.step == 11  # the interrupted step was finished, then saved
    resumed.fit()
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key


def test_interrupt_during_evaluation_logs_the_epoch_once_with_its_real_values(synthetic, tmp_path):
    torch.manual_seed(1)
    init = small_model().state_dict()
    reference = Trainer(small_model(), synthetic, quick_config(epochs=2))
    reference.model.load_state_dict(init)
    reference.fit()

    class InterruptFirstEvaluation(Callback):
        def on_epoch_end(self, trainer, epoch, metrics):
            if epoch == 0:
                raise KeyboardInterrupt  # after the epoch's last batch, before its line is written

    model = small_model()
    model.load_state_dict(init)
    run = tmp_path / "r"
    with pytest.raises(Interrupted):
        Trainer(model, synthetic, quick_config(epochs=2), callbacks=[InterruptFirstEvaluation()], run_dir=run).fit()
    assert not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().strip()
    resumed = Trainer(small_model(), synthetic, quick_config(epochs=2), run_dir=run)
    resumed.resume(run / "last.safetensors")
    resumed.fit()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert metrics[0]["train_loss"] == pytest.approx(reference.history[0]["train_loss"], rel=1e-5)
    assert metrics[0]["images_per_s"] > 0


def test_cli_interrupt_exits_130_with_the_resume_command(tmp_path, capsys, monkeypatch):
    from effdl.cli import main

    def interrupt(self, loader=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "evaluate", interrupt)
    code = main(["train", "--data", "synthetic", "--model", "resnet20", "--model-kwargs", "{width: 0.25}",
                 "--epochs", "1", "--batch-size", "256", "--progress", "false", "--out-dir", str(tmp_path),
                 "--name", "r"])
    err = capsys.readouterr().err
    assert code == 130 and "effdl: error" not in err
    assert f"resume with `effdl train --resume {tmp_path / 'r'}`" in err


def test_best_is_the_last_epoch_without_validation_and_chosen_on_validation_with_it(synthetic, tmp_path):
    Trainer(small_model(), synthetic, quick_config(epochs=2), run_dir=tmp_path / "a").fit()
    best, _ = read_checkpoint(tmp_path / "a" / "best.safetensors")
    last, _ = read_checkpoint(tmp_path / "a" / "last.safetensors")
    best, last = split_namespace(best, "model"), split_namespace(last, "model")
    assert all(torch.equal(best[k], last[k]) for k in last)  # never chosen on the test split
    from effdl.train import train

    result = train(quick_config(epochs=2, val_size=64, out_dir=str(tmp_path), name="v"))
    summary = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert summary["selected_on"] == "val" and summary["total"] == 256
    metrics = [json.loads(line) for line in (tmp_path / "v" / "metrics.jsonl").read_text().splitlines()]
    assert result.best_eval_accuracy == max(m["eval_acc"] for m in metrics)  # validation accuracy


def test_existing_run_is_refused_unless_overwrite(tmp_path):
    from effdl.train import train

    config = quick_config(epochs=1, batch_size=256, out_dir=str(tmp_path), name="r")
    train(config)
    before = (tmp_path / "r" / "summary.json").read_text()
    with pytest.raises(EffdlError, match="already holds a run.*--overwrite"):
        train(config)
    assert (tmp_path / "r" / "summary.json").read_text() == before
    train(config, overwrite=True)
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 1  # nothing of the old run left


def test_fine_tuning_on_other_classes_is_refused(synthetic):
    model = small_model()  # 10 classes
    with pytest.raises(EffdlError, match="predicts 10 classes.* has 4"):
        Trainer(model, synthetic_dataset(num_classes=4), quick_config())
    model.effdl_data = {**synthetic.data_meta(), "classes": [f"c{i}" for i in range(10)]}
    with pytest.raises(EffdlError, match="classes .*label by label"):
        Trainer(model, synthetic, quick_config())


def test_default_run_name_says_the_dataset():
    from effdl.train.trainer import default_run_name

    assert default_run_name(quick_config(dataset="cifar100")).startswith("resnet20-cifar100-")
    assert default_run_name(quick_config(dataset="imagefolder:/data/flowers/")).startswith("resnet20-flowers-")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(synthetic, tmp_path):
    class PoisonSecondEpoch(Callback):
        def extra_loss(self, trainer, images, targets, logits, loss):
            return torch.tensor(math.nan) if trainer.epoch == 1 else None

    run = tmp_path / "run"
    trainer = Trainer(small_model(), synthetic, quick_config(epochs=3), callbacks=[PoisonSecondEpoch()], run_dir=run)
    with pytest.raises(NonFiniteLoss, match=f"from before it: {run / 'last.safetensors'}"):
        trainer.fit()
    model, meta = load_model(run / "last.safetensors")
    assert meta["train_state"]["epoch"] == 1  # the checkpoint from the end of the good epoch
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_loss_that_fails_in_the_first_epoch_names_no_checkpoint(synthetic, tmp_path):
    class PoisonFirstStep(Callback):
        def extra_loss(self, trainer, images, targets, logits, loss):
            return torch.tensor(math.nan)

    run = tmp_path / "run"
    trainer = Trainer(small_model(), synthetic, quick_config(epochs=2), callbacks=[PoisonFirstStep()], run_dir=run)
    with pytest.raises(NonFiniteLoss, match="No checkpoint was written before it") as info:
        trainer.fit()
    assert "safetensors" not in str(info.value) and not (run / "last.safetensors").exists()


def test_callbacks_see_every_stage_and_can_add_loss(synthetic):
    calls = []

    class Recorder(Callback):
        def on_train_start(self, trainer):
            calls.append("start")

        def on_epoch_start(self, trainer, epoch):
            calls.append(f"epoch{epoch}")

        def extra_loss(self, trainer, images, targets, logits, loss):
            return 0.0 * logits.sum()

        def on_after_step(self, trainer):
            with torch.no_grad():
                trainer.model.fc.weight.clamp_(-0.01, 0.01)

        def on_epoch_end(self, trainer, epoch, metrics):
            metrics["custom"] = 1

        def on_train_end(self, trainer):
            calls.append("end")

    model = small_model()
    Trainer(model, synthetic, quick_config(), callbacks=[Recorder()]).fit()
    assert calls == ["start", "epoch0", "epoch1", "end"]
    assert model.fc.weight.abs().max() <= 0.01


def test_ema_and_options_run(synthetic, tmp_path):
    config = quick_config(epochs=1, ema_decay=0.9, label_smoothing=0.1, grad_clip=1.0, optimizer="adamw",
                          lr=1e-3, schedule="cosine", warmup_epochs=0.5, tta=True)
    result = Trainer(small_model(), synthetic, config, run_dir=tmp_path / "run").fit()
    assert 0 <= result.accuracy <= 1 and result.total == 256
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["tta"] is True  # the report marks it


@pytest.mark.parametrize("schedule", ["onecycle", "triangular", "cosine"])
def test_schedules_warm_up_then_decay_to_zero(schedule):
    factors = [lr_factor(schedule, s, 100, warmup_steps=20) for s in range(100)]
    assert factors[0] < factors[10] < factors[19] == 1.0
    assert factors[50] < 1.0 and factors[-1] < 0.02
    assert all(a >= b for a, b in zip(factors[19:], factors[20:]))


def test_multistep_schedule():
    assert [lr_factor("multistep", s, 100, 0, (30, 60), 0.1) for s in (0, 30, 60)] == pytest.approx([1, 0.1, 0.01])


def test_weight_decay_skips_bn_and_bias_by_default():
    from effdl.train.trainer import build_optimizer

    opt = build_optimizer(small_model(), quick_config())
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    model_params = list(opt.param_groups[0]["params"]) + list(opt.param_groups[1]["params"])
    assert all((id(p) in decayed) == (p.ndim > 1) for p in model_params)


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(EffdlError, match="unknown key 'lrr'"):
        make_config({"lrr": 0.1})
    with pytest.raises(EffdlError, match="unknown key 'augment.cutoutt'"):
        make_config({"augment": {"cutoutt": 8}})
    with pytest.raises(EffdlError, match="epochs"):
        make_config({"epochs": 0})


def test_tensorboard_logging_writes_events(synthetic, tmp_path):
    pytest.importorskip("tensorboard")
    Trainer(small_model(), synthetic, quick_config(epochs=1, tensorboard=True), run_dir=tmp_path / "r").fit()
    assert list((tmp_path / "r" / "tensorboard").glob("events.out.tfevents.*"))


def test_reestimate_batchnorm_sets_running_stats_to_the_batches_average():
    from effdl.train import reestimate_batchnorm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    batches = [torch.randn(8, 3, 8, 8) + 2 for _ in range(3)]
    with torch.no_grad():
        conv_out = torch.cat([model[0](b) for b in batches])
    reestimate_batchnorm(model, batches)
    assert not model.training and model[1].momentum == 0.1  # momentum restored
    torch.testing.assert_close(model[1].running_mean, conv_out.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert model[0].weight.grad is None


def test_model_options_may_repeat_the_datas_class_count_but_not_contradict_it(tmp_path):
    """num_classes in model_kwargs (a user's, or a checkpoint's recorded spec) collided with the one
    train() passes: a raw TypeError whatever its value."""
    from effdl.train import train

    config = quick_config(epochs=1, out_dir=str(tmp_path), name="three", train_limit=64, test_limit=32,
                          model_kwargs={"width": 0.25, "num_classes": 3})
    with pytest.raises(EffdlError, match="num_classes=3 differs from the 10 classes of synthetic"):
        train(config)
    assert not (tmp_path / "three").exists()
    config = quick_config(epochs=1, out_dir=str(tmp_path), name="ten", train_limit=64, test_limit=32,
                          model_kwargs={"width": 0.25, "num_classes": 10})
    assert train(config).total == 32


@pytest.mark.parametrize("values, message", [
    ({"optimizer": "adamw", "momentum": 0.8}, "momentum is read only with optimizer sgd; optimizer adamw does not use it"),
    ({"optimizer": "adamw", "nesterov": False}, "nesterov is read only with optimizer sgd"),
    ({"momentum": 0.0}, "nesterov needs momentum > 0"),
    ({"schedule": "cosine", "milestones": [3]}, "milestones is read only with schedule multistep; schedule cosine"),
    ({"gamma": 0.5}, "gamma is read only with schedule multistep; schedule onecycle does not use it"),
])
def test_an_option_the_chosen_optimizer_or_schedule_does_not_read_is_refused(values, message):
    with pytest.raises(EffdlError, match=f"^invalid config \\(arguments\\): {message}"):
        make_config(values)
    assert make_config({"schedule": "multistep", "milestones": [3], "gamma": 0.5}).gamma == 0.5


def test_configs_made_elsewhere_leave_out_what_their_optimizer_never_read():
    """A source run, an older run's config.yaml or a sweep trial (momentum swept with adamw) set what
    their optimizer ignored: fine-tunes, resumes and trials leave it out instead of failing."""
    from effdl.pipelines.finetune import FineTuneOptions, finetune_config
    from effdl.search.sweep import SweepSpec, trial_setup
    from effdl.train.config import without_unread_settings

    source = {"dataset": "synthetic", "model": "tiny_cnn", "optimizer": "adamw", "momentum": 0.8, "nesterov": False}
    tuned = finetune_config(source, "synthetic", "tiny_cnn", FineTuneOptions(epochs=1))
    assert tuned.optimizer == "adamw" and (tuned.momentum, tuned.nesterov) == (0.9, True)
    with pytest.warns(UserWarning, match="old/config.yaml: momentum, nesterov not read"):
        kept = without_unread_settings(source, where="old/config.yaml")
    assert kept == {"dataset": "synthetic", "model": "tiny_cnn", "optimizer": "adamw"}
    spec = SweepSpec(name="s", params={"momentum": [0.9, 0.95]}, base={"dataset": "synthetic", "model": "tiny_cnn"})
    with pytest.warns(UserWarning, match="sweep s, t1: momentum not read"):
        trial = trial_setup(spec, {"optimizer": "adamw", "momentum": 0.95}, Path("runs"), "t1", plan_only=True)
    assert trial.optimizer == "adamw" and trial.momentum == 0.9
