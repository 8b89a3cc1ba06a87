"""`effdl prune`: run directories with measured facts, fine-tuning through the trainer, bad input."""

import json

import pytest
import torch

from effdl.checkpoint import load_model, save_model
from effdl.cli import main
from effdl.measure import evaluate
from effdl.measure.counting import profile
from effdl.compress.prune import measure_sparsity
from effdl.models import create_model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_model(path, create_model("resnet20", width=0.25), config={"dataset": "synthetic", "model": "resnet20",
                                                                     "model_kwargs": {"width": 0.25}})
    return path


def run_prune(checkpoint, out, *args) -> dict:
    code = main(["prune", str(checkpoint), "--out", str(out), "--device", "cpu", *args])
    assert code == 0
    return json.loads((out / "summary.json").read_text())


def test_magnitude_with_fine_tuning_writes_a_sparse_run(checkpoint, tmp_path, capsys):
    s = run_prune(checkpoint, tmp_path / "mag", "--method", "magnitude", "--sparsity", "0.7", "--epochs", "1",
                  "--batch-size", "64", "--train-limit", "128")
    model, meta = load_model(tmp_path / "mag" / "best.safetensors")
    report = measure_sparsity(model)
    assert report.zeros == round(0.7 * report.total)
    assert s["details"]["sparsity"] == pytest.approx(report.sparsity)
    assert s["details"]["macs_after"] == s["details"]["macs_before"] and s["details"]["params_after"] == s["details"]["params_before"]
    assert s["details"]["size_bytes_after"] < s["details"]["size_bytes_before"]
    assert s["total"] == 256 and len(s["details"]["finetune"]) == 1
    per_epoch = s["details"]["finetune"][0]["accuracy_per_epoch"]  # one test accuracy per fine-tuning epoch
    assert len(per_epoch) == 1 and 0 <= per_epoch[0] <= 1
    assert meta["prune"]["method"] == "magnitude"
    out = capsys.readouterr().out
    assert "not dense latency" in out and "sparsity" in out


def test_structured_pruning_to_a_mac_budget_reloads(checkpoint, tmp_path, capsys):
    s = run_prune(checkpoint, tmp_path / "l1", "--method", "l1-filter", "--target-macs", "0.5")
    assert s["details"]["macs_after"] <= 0.5 * s["details"]["macs_before"] and s["details"]["params_after"] < s["details"]["params_before"]
    model, _ = load_model(tmp_path / "l1" / "best.safetensors")
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert "physically removed" in capsys.readouterr().out
    # BatchNorm statistics were re-estimated after the cut (the fresh checkpoint's are all ones)
    bn = model.layers[2][0].bn1
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert 0 <= s["details"]["accuracy_before_finetune"] <= 1


def test_without_fine_tuning_the_test_split_is_evaluated_once_per_model(checkpoint, tmp_path, monkeypatch):
    import effdl.measure.accuracy as accuracy

    calls = []  # every test-split evaluation of the pipelines goes through effdl.measure.accuracy.evaluate
    monkeypatch.setattr(accuracy, "evaluate", lambda *a, **kw: calls.append(1) or evaluate(*a, **kw))
    s = run_prune(checkpoint, tmp_path / "once", "--method", "l1-filter", "--target-macs", "0.5", "--test-limit", "64")
    assert len(calls) == 2  # the source model, and the pruned model after BatchNorm re-estimation
    assert s["accuracy"] == s["details"]["accuracy_before_finetune"]


def test_fine_tuning_can_be_compiled_and_keeps_the_masks(checkpoint, tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or fn)  # a real compile takes minutes
    s = run_prune(checkpoint, tmp_path / "compiled", "--method", "magnitude", "--sparsity", "0.5", "--epochs", "1",
                  "--batch-size", "64", "--train-limit", "64", "--test-limit", "64", "--compile")
    assert len(compiled) == 1 and s["details"]["options"]["compile"]
    assert s["details"]["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_layer_ratios_keep_chosen_layers_whole(checkpoint, tmp_path):
    s = run_prune(checkpoint, tmp_path / "lr", "--method", "l1-filter", "--sparsity", "0.5",
                  "--layer-ratio", "conv1=0", "layers.0.*=0")
    model, _ = load_model(tmp_path / "lr" / "best.safetensors")
    widths = {name: m.out_channels for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert widths["conv1"] == widths["layers.0.0.conv1"] == 4 and widths["layers.2.0.conv2"] == 8
    assert s["details"]["options"]["layer_ratios"] == {"conv1": 0.0, "layers.0.*": 0.0}
    run_prune(checkpoint, tmp_path / "inner", "--method", "l1-filter", "--sparsity", "0",
              "--layer-ratio", "layers.*.conv1=0.5")  # only the blocks' inner convolutions shrink
    model, _ = load_model(tmp_path / "inner" / "best.safetensors")
    widths = {name: m.out_channels for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert widths["layers.0.0.conv1"] == 2 and widths["layers.2.2.conv1"] == 8
    assert widths["conv1"] == 4 and widths["layers.2.2.conv2"] == 16


def test_thinet_and_slimming_methods_run(checkpoint, tmp_path):
    s = run_prune(checkpoint, tmp_path / "thinet", "--method", "thinet", "--sparsity", "0.5",
                  "--calibration-batches", "1")
    assert s["details"]["macs_after"] < 0.5 * s["details"]["macs_before"]
    s = run_prune(checkpoint, tmp_path / "slim", "--method", "slimming", "--sparsity", "0.25", "--penalty-epochs", "1",
                  "--penalty", "1e-3", "--batch-size", "64", "--train-limit", "128")
    assert s["details"]["params_after"] < s["details"]["params_before"]


def test_agp_needs_and_uses_training(checkpoint, tmp_path, capsys):
    assert main(["prune", str(checkpoint), "--method", "agp", "--sparsity", "0.5", "--out", str(tmp_path / "a")]) == 2
    assert "--epochs" in capsys.readouterr().err
    s = run_prune(checkpoint, tmp_path / "agp", "--method", "agp", "--sparsity", "0.5", "--epochs", "1",
                  "--batch-size", "32", "--train-limit", "128")
    assert s["details"]["sparsity"] == pytest.approx(0.5, abs=1e-4)


def test_distillation_fine_tunes_against_the_unpruned_model(checkpoint, tmp_path, monkeypatch):
    from effdl.compress.distill import kd
    from effdl.train import Trainer

    seen = []
    real_fit = Trainer.fit

    def fit(trainer):
        seen.append([cb for cb in trainer.callbacks if isinstance(cb, kd.Distillation)])
        return real_fit(trainer)

    monkeypatch.setattr(Trainer, "fit", fit)
    s = run_prune(checkpoint, tmp_path / "kd", "--method", "l1-filter", "--target-macs", "0.5", "--epochs", "1",
                  "--batch-size", "64", "--train-limit", "128", "--distill", "0.7", "--distill-temperature", "2")
    (teachers,) = seen
    (teacher_cb,) = teachers
    assert (teacher_cb.alpha, teacher_cb.temperature) == (0.7, 2.0)
    # the teacher is the model before the cut, unchanged by the fine-tune
    original, _ = load_model(checkpoint)
    for name, tensor in original.state_dict().items():
        assert torch.equal(teacher_cb.teacher.state_dict()[name].cpu(), tensor), name
    assert s["details"]["macs_after"] <= 0.5 * s["details"]["macs_before"] and s["details"]["options"]["distill"] == 0.7


@pytest.mark.parametrize("args,message", [
    (["--method", "magnitude", "--sparsity", "1.0"], "sparsity"),
    (["--method", "magnitude", "--sparsity", "-0.5"], "sparsity"),
    (["--method", "snip", "--sparsity", "0.5"], "unknown pruning method"),
    (["--method", "magnitude", "--sparsity", "0.5", "--include", "nothing.*"], "matches no"),
    (["--method", "lottery", "--sparsity", "0.5"], "--rewind-to"),
    (["--method", "magnitude", "--sparsity", "0.5", "--layer-ratio", "fc=0.5"], "structured methods"),
    (["--method", "l1-filter", "--sparsity", "0.5", "--layer-ratio", "fc=1.5"], "ratio"),
    (["--method", "l1-filter", "--sparsity", "0.5", "--distill", "1.5"], "--distill"),
    (["--method", "block"], "--blocks"),
    (["--method", "block", "--blocks", "2", "--sparsity", "0.5"], "channel pruning"),
    (["--method", "l1-filter", "--blocks", "2"], "--blocks applies to method block"),
    (["--method", "block", "--blocks", "2", "--target-macs", "0.5"], "one of --blocks"),
    (["--method", "block", "--blocks", "9"], "has 7 removable"),
    (["--method", "block", "--blocks", "3", "--include", "layers.2.*"], "include / exclude leave 2 removable"),
    (["--method", "block", "--blocks", "1", "--include", "layers.1.0"], "identity shortcut"),
    (["--method", "block", "--blocks", "1", "--scope", "global"], "--scope and --rounds do not apply"),
    (["--method", "block", "--blocks", "1", "--calibration-batches", "0"], "--calibration-batches must be >= 1"),
    (["--method", "l1-filter", "--target-macs", "1.2"], "in (0, 1); got 1.2"),
    # an option the method does not read, set, is refused (it changed nothing before)
    (["--method", "magnitude", "--sparsity", "0.5", "--round-to", "8"],
     "--round-to (round_to) is an option of --method l1-filter, l2-filter, slimming, thinet; "
     "--method magnitude does not use it"),
    (["--method", "agp", "--sparsity", "0.5", "--epochs", "1", "--rounds", "2"],
     "--rounds (rounds) is an option of --method magnitude, lottery; --method agp does not use it"),
    (["--method", "l1-filter", "--sparsity", "0.5", "--rounds", "2"], "--method l1-filter does not use it"),
    (["--method", "magnitude", "--sparsity", "0.5", "--rewind-to", "early.safetensors"],
     "--rewind-to (rewind_to) is an option of --method lottery; --method magnitude does not use it"),
    (["--method", "l2-filter", "--sparsity", "0.5", "--penalty-epochs", "1"],
     "--penalty-epochs (penalty_epochs) is an option of --method slimming"),
    (["--method", "magnitude", "--sparsity", "0.5", "--penalty", "0.001"], "--penalty (penalty) is an option of"),
    (["--method", "l1-filter", "--sparsity", "0.5", "--calibration-batches", "2"],
     "--calibration-batches (calibration_batches) is an option of --method thinet, block; --method l1-filter"),
    (["--method", "l1-filter", "--sparsity", "0.5", "--scan-images", "100"],
     "--scan-images (scan_images) is an option of --method magnitude; --method l1-filter does not use it"),
    # read by the method, but only together with another option
    (["--method", "slimming", "--sparsity", "0.5", "--penalty", "0.001"], "give --penalty-epochs too"),
    (["--method", "magnitude", "--sparsity", "0.5", "--scan-images", "100"], "give --sensitivity-drop too"),
    (["--method", "magnitude", "--sensitivity-drop", "0.02", "--sparsity", "0.5"],
     "--sparsity and --scope global do not apply"),
    (["--method", "magnitude", "--sensitivity-drop", "0.02", "--scope", "global"], "--scope global do not apply"),
    (["--method", "magnitude", "--sparsity", "0.5", "--rounds", "3"], "--rounds alternates pruning and fine-tuning"),
    (["--method", "l1-filter", "--sparsity", "0.5", "--distill", "0.7"],
     "--distill acts during fine-tuning: give --epochs"),
    (["--method", "l1-filter", "--sparsity", "0.5", "--lr", "0.001"],
     "--lr (lr) is a setting of the fine-tune; without --epochs there is none"),
    (["--method", "l1-filter", "--sparsity", "0.5", "--epochs", "1", "--distill-temperature", "2"],
     "--distill-temperature (distill_temperature) shapes the --distill term"),
    (["--method", "l1-filter", "--sparsity", "0.5", "--epochs", "1", "--distill-method", "at"],
     "--distill-method (distill_method) shapes the --distill term"),
    (["--method", "l1-filter", "--sparsity", "0.5", "--epochs", "1", "--distill", "0.7", "--distill-method", "fitnets",
      "--distill-temperature", "2"], "--distill-method fitnets does not use it"),
])
def test_bad_input_is_one_line_and_writes_nothing(checkpoint, tmp_path, capsys, args, message):
    out = tmp_path / "bad"
    assert main(["prune", str(checkpoint), "--out", str(out), "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (out / "best.safetensors").exists()


def test_block_pruning_removes_blocks_fine_tunes_and_records_them(checkpoint, tmp_path, capsys):
    s = run_prune(checkpoint, tmp_path / "blocks", "--method", "block", "--blocks", "3", "--epochs", "1",
                  "--batch-size", "64", "--train-limit", "128", "--calibration-batches", "1")["details"]
    assert len(s["blocks_removed"]) == 3 and set(s["blocks_removed"]) <= set(s["block_distortion"])
    assert s["macs_after"] < s["macs_before"] and s["params_after"] < s["params_before"]
    model, _ = load_model(tmp_path / "blocks" / "best.safetensors")
    assert sum(isinstance(m, torch.nn.Identity) for m in model.modules()) >= 3
    assert profile(model).macs == s["macs_after"]
    assert "blocks       removed" in capsys.readouterr().out


def test_layers_left_whole_are_listed_in_the_summary_and_output(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "shuffle.safetensors"
    save_model(path, create_model("shufflenet_v2", width=0.5), config={"dataset": "synthetic", "model": "shufflenet_v2",
                                                                       "model_kwargs": {"width": 0.5}})
    s = run_prune(path, tmp_path / "pruned", "--method", "l1-filter", "--sparsity", "0.5", "--test-limit", "32")
    left = s["details"]["channels_left_whole"]
    assert left and all("channel shuffle" in why for why in left.values())
    assert "layers.0.1.branch.2.0" in left  # the branch's last conv feeds the shuffle
    out = capsys.readouterr().out
    assert "left whole" in out and "layers.0.1.branch.2.0" in out
    assert s["details"]["params_after"] < s["details"]["params_before"]
