"""Unstructured pruning: magnitude masks, mask keeping, schedules, lottery rewinding, sensitivity."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from effdl.compress.prune import (
    AGPCallback,
    MaskCallback,
    agp_sparsity,
    iterative_pruning,
    iterative_sparsities,
    lottery_ticket,
    magnitude_masks,
    make_permanent,
    measure_sparsity,
    prune_magnitude,
    sensitivity_scan,
    snapshot,
)
from effdl.errors import EffdlError


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


LAYERS = ("0", "2", "6")


def zeros(model: nn.Module, name: str) -> int:
    return int((dict(model.named_modules())[name].weight == 0).sum())


def test_global_magnitude_pruning_is_exact_and_uses_one_threshold():
    model = tiny_net()
    masks = prune_magnitude(model, 0.7, scope="global")
    report = measure_sparsity(model)
    assert report.zeros == round(0.7 * report.total)
    kept = torch.cat([model.get_submodule(n).weight[masks[n]].abs() for n in LAYERS])
    removed = torch.cat([model.get_submodule(n).weight[~masks[n]] for n in LAYERS])
    assert (removed == 0).all()
    before = tiny_net()
    pruned_mags = torch.cat([before.get_submodule(n).weight[~masks[n]].abs() for n in LAYERS])
    assert kept.min() >= pruned_mags.max()  # a single global magnitude threshold
    assert len({round(v, 3) for v in report.per_layer.values()}) > 1  # layers end up different


def test_per_layer_pruning_hits_each_layer_exactly():
    model = tiny_net()
    prune_magnitude(model, 0.5, scope="layer")
    for name in LAYERS:
        n = model.get_submodule(name).weight.numel()
        assert zeros(model, name) == round(0.5 * n)


def test_per_layer_targets_by_name_and_glob_leave_others_dense():
    model = tiny_net()
    prune_magnitude(model, {"0": 0.25, "[26]": 0.75})
    assert zeros(model, "0") == round(0.25 * 8 * 3 * 9)
    assert zeros(model, "2") == round(0.75 * 16 * 8 * 9)
    assert zeros(model, "6") == round(0.75 * 160)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, "half"])
def test_sparsity_outside_unit_interval_is_rejected_before_any_change(bad):
    model = tiny_net()
    before = snapshot(model)
    with pytest.raises(EffdlError, match="sparsity"):
        prune_magnitude(model, bad)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unmatched_layer_pattern_and_unknown_scope_are_errors():
    with pytest.raises(EffdlError, match="matches no prunable layer"):
        prune_magnitude(tiny_net(), 0.5, include=["features.*"])
    with pytest.raises(EffdlError, match="matches no prunable layer"):
        prune_magnitude(tiny_net(), {"nope": 0.5})
    with pytest.raises(EffdlError, match="scope"):
        prune_magnitude(tiny_net(), 0.5, scope="everything")


def train_steps(model: nn.Module, callbacks, steps: int = 3) -> None:
    trainer = SimpleNamespace(model=model, ema=None, step=0, total_steps=steps)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for cb in callbacks:
        cb.on_train_start(trainer)
    for _ in range(steps):
        loss = model(torch.randn(4, 3, 8, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        trainer.step += 1
        for cb in callbacks:
            cb.on_after_step(trainer)
    for cb in callbacks:
        cb.on_train_end(trainer)


def test_masks_survive_optimizer_steps_only_with_the_callback():
    model = tiny_net()
    masks = prune_magnitude(model, 0.8)
    pruned = measure_sparsity(model).zeros
    train_steps(model, [])
    assert measure_sparsity(model).zeros < pruned  # plain training revives pruned weights
    model = tiny_net()
    masks = prune_magnitude(model, 0.8)
    train_steps(model, [MaskCallback(masks)])
    assert measure_sparsity(model).zeros == pruned
    for name in LAYERS:
        assert (model.get_submodule(name).weight[~masks[name]] == 0).all()


def test_mask_callback_with_the_real_trainer_keeps_the_saved_model_sparse(tmp_path):
    from effdl.checkpoint import load_model
    from effdl.data.datasets import synthetic_dataset
    from effdl.models import create_model
    from effdl.train import Trainer, make_config

    model = create_model("resnet20", width=0.25)
    masks = prune_magnitude(model, 0.6)
    data = synthetic_dataset(n_train=128, n_test=64)
    config = make_config({"epochs": 1, "batch_size": 64, "lr": 0.05, "device": "cpu", "progress": False,
                          "ema_decay": 0.9, "dataset": "synthetic", "model": "resnet20"})
    Trainer(model, data, config, callbacks=[MaskCallback(masks)], run_dir=tmp_path).fit()
    report = measure_sparsity(model)
    assert report.zeros == round(0.6 * report.total)
    saved, _ = load_model(tmp_path / "best.safetensors")  # EMA weights: masked too
    assert measure_sparsity(saved).zeros == report.zeros


def test_make_permanent_leaves_plain_zero_weights_without_masks_or_hooks():
    model = tiny_net()
    torch_prune.global_unstructured([(model[0], "weight"), (model[2], "weight")],
                                    pruning_method=torch_prune.L1Unstructured, amount=0.5)
    assert any(name.endswith("_mask") for name, _ in model.named_buffers())
    expected = model(torch.ones(1, 3, 8, 8))
    make_permanent(model)
    assert not any(name.endswith("_mask") for name, _ in model.named_buffers())
    assert not any(name.endswith("_orig") for name, _ in model.named_parameters())
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert torch.allclose(model(torch.ones(1, 3, 8, 8)), expected)
    assert zeros(model, "0") + zeros(model, "2") == round(0.5 * (8 * 27 + 16 * 72))


def test_agp_schedule_values():
    assert agp_sparsity(0, 0.9, 100) == 0.0
    assert agp_sparsity(100, 0.9, 100) == pytest.approx(0.9)
    assert agp_sparsity(500, 0.9, 100) == pytest.approx(0.9)
    assert agp_sparsity(50, 0.9, 100) == pytest.approx(0.9 * (1 - 0.5**3))
    assert agp_sparsity(60, 0.8, 110, initial=0.2, start_step=10) == pytest.approx(0.8 - 0.6 * 0.125)
    values = [agp_sparsity(t, 0.9, 100) for t in range(0, 101, 10)]
    assert values == sorted(values)
    steps = [b - a for a, b in zip(values, values[1:])]
    assert steps == sorted(steps, reverse=True)  # prunes fast first, then slower


def test_agp_callback_ramps_to_the_exact_final_sparsity():
    model = tiny_net()
    agp = AGPCallback(0.75, end_step=6, every=2)
    train_steps(model, [agp], steps=8)
    targets = [s for _, s in agp.history]
    assert targets == sorted(targets) and targets[0] == 0.0 and targets[-1] == pytest.approx(0.75)
    report = measure_sparsity(model)
    assert report.zeros == round(0.75 * report.total)


def test_iterative_pruning_nests_masks_and_reaches_the_target():
    fractions = iterative_sparsities(0.9, 3)
    assert fractions[-1] == pytest.approx(0.9)
    kept = [1.0] + [1 - f for f in fractions]
    assert [b / a for a, b in zip(kept, kept[1:])] == pytest.approx([0.1 ** (1 / 3)] * 3)
    model = tiny_net()
    seen = []

    def retrain(m, masks):
        seen.append({k: v.clone() for k, v in masks.items()})
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.01)  # training moves every weight

    iterative_pruning(model, 0.9, 3, retrain)
    for earlier, later in zip(seen, seen[1:]):
        assert all((~earlier[k] & later[k]).sum() == 0 for k in earlier)  # pruned stays pruned
    report = measure_sparsity(model)
    assert report.zeros == round(0.9 * report.total)


def test_lottery_ticket_rewinds_survivors_to_early_weights_and_keeps_zeros():
    model = tiny_net()
    early = snapshot(model)
    with torch.no_grad():  # "training": weights move far from their early values
        for p in model.parameters():
            p.mul_(torch.rand_like(p) * 4)
    trained = snapshot(model)
    masks = lottery_ticket(model, early, 0.8, retrain=lambda m, masks: None)
    for name in LAYERS:
        w = model.get_submodule(name).weight
        keep = masks[name]
        assert torch.equal(w[keep], early[f"{name}.weight"][keep])
        assert (w[~keep] == 0).all()
        # the ticket is chosen by the trained magnitudes, not the early ones
        assert torch.equal(keep, magnitude_masks(_with(trained), 0.8)[name])
    assert torch.equal(model[6].bias, early["6.bias"])


def _with(state) -> nn.Module:
    model = tiny_net()
    model.load_state_dict(state)
    return model


def test_sensitivity_scan_table_plot_and_targets(tmp_path):
    model = tiny_net()
    original = snapshot(model)

    def fake_accuracy(m):  # layer "0" is fragile, the others robust
        r = measure_sparsity(m).per_layer
        return 1.0 - 0.5 * r["0"] - 0.01 * (r["2"] + r["6"])

    scan = sensitivity_scan(model, fake_accuracy, sparsities=[0.1, 0.2, 0.5, 0.9])
    assert all(torch.equal(original[k], v) for k, v in model.state_dict().items())
    assert scan.baseline == 1.0
    assert scan.accuracy["0"][2] == pytest.approx(1 - 0.5 * round(0.5 * 216) / 216)
    targets = scan.layer_targets(max_drop=0.11)
    assert targets == {"0": 0.2, "2": 0.9, "6": 0.9}
    prune_magnitude(model, targets)
    assert measure_sparsity(model).per_layer["0"] == pytest.approx(round(0.2 * 216) / 216)
    assert scan.plot(tmp_path / "sens.png").stat().st_size > 1000
    assert scan.table().row_count == 3
