import json
import math

import pytest
import torch
import yaml

from effdl import EffdlError, create_model
from effdl.checkpoint import load_model
from effdl.train import Callback, NonFiniteLoss, Trainer, make_config
from effdl.train.schedule import lr_factor


def quick_config(**overrides):
    base = dict(dataset="synthetic", model="resnet20", model_kwargs={"width": 0.25}, epochs=2,
                batch_size=64, lr=0.05, progress=False, bf16=False)
    return make_config({**base, **overrides})


def small_model():
    return create_model("resnet20", width=0.25)


def test_training_learns_and_writes_a_complete_run_dir(synthetic, tmp_path):
    config = quick_config(epochs=4, lr=0.1)
    trainer = Trainer(small_model(), synthetic, config, run_dir=tmp_path / "run")
    result = trainer.fit()
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.jsonl", "best.safetensors",
                                               "last.safetensors", "summary.json"}
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    assert trainer.history == metrics  # the same per-epoch record, in memory
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert result.accuracy > 0.3  # chance is 0.1 on the 10-class synthetic set
    summary = json.loads((run / "summary.json").read_text())
    assert summary["correct"] == result.correct and summary["total"] == 256
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
    with pytest.raises(EffdlError, match="resum"):
        trainer.fit()

    resumed_model = small_model()
    resumed = Trainer(resumed_model, synthetic, quick_config(epochs=2), run_dir=tmp_path / "r")
    resumed.resume(tmp_path / "r" / "last.safetensors")
    assert resumed.step == 11 and resumed.epoch == 1
    resumed.fit()
    for key, value in reference.state_dict().items():
        assert torch.allclose(value.float(), resumed_model.state_dict()[key].float(), atol=1e-5), key


def test_nan_loss_stops_and_keeps_last_good_checkpoint(synthetic, tmp_path):
    class PoisonSecondEpoch(Callback):
        def extra_loss(self, trainer, images, targets, logits, loss):
            return torch.tensor(math.nan) if trainer.epoch == 1 else None

    run = tmp_path / "run"
    trainer = Trainer(small_model(), synthetic, quick_config(epochs=3), callbacks=[PoisonSecondEpoch()], run_dir=run)
    with pytest.raises(NonFiniteLoss):
        trainer.fit()
    model, meta = load_model(run / "last.safetensors")
    assert meta["train_state"]["epoch"] == 1  # the checkpoint from the end of the good epoch
    assert all(torch.isfinite(p).all() for p in model.parameters())


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


def test_ema_and_options_run(synthetic):
    config = quick_config(epochs=1, ema_decay=0.9, label_smoothing=0.1, grad_clip=1.0, optimizer="adamw",
                          lr=1e-3, schedule="cosine", warmup_epochs=0.5, tta=True)
    result = Trainer(small_model(), synthetic, config).fit()
    assert 0 <= result.accuracy <= 1 and result.total == 256


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
