"""effdl.pipelines: one fine-tuning path (from the source run's config), one run writer, one summary schema."""

import json

import pytest
import torch
import yaml

from effdl.checkpoint import load_model, read_checkpoint_meta, save_model
from effdl.errors import EffdlError
from effdl.models import create_model
from effdl.pipelines.finetune import FineTuneOptions, finetune_config
from effdl.pipelines.prune import PruneOptions, prune_checkpoint
from effdl.pipelines.quantize import QuantizeOptions, quantize_run
from effdl.pipelines.run_dir import CORE_FIELDS

pytestmark = pytest.mark.usefixtures("one_thread")

# A source run trained with choices that differ from every TrainConfig default.
SOURCE_CONFIG = {
    "dataset": "synthetic", "model": "tiny_cnn", "epochs": 200, "lr": 0.4, "batch_size": 64, "weight_decay": 1e-3,
    "label_smoothing": 0.1, "augment": {"crop_padding": 2, "flip": False, "cutout": 8}, "optimizer": "sgd",
    "name": "source-run", "out_dir": "elsewhere", "val_size": 100, "ema_decay": 0.99, "schedule": "multistep",
    "milestones": [100, 150], "gamma": 0.2,
}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("src") / "model.safetensors"
    save_model(path, create_model("tiny_cnn"), config=SOURCE_CONFIG)
    return path


def test_finetune_config_inherits_the_source_run_and_overrides_only_the_fine_tune():
    config = finetune_config(SOURCE_CONFIG, "synthetic", "tiny_cnn", FineTuneOptions(epochs=3, lr=0.02, test_limit=40))
    assert (config.weight_decay, config.label_smoothing, config.batch_size) == (1e-3, 0.1, 64)
    assert config.augment.cutout == 8 and not config.augment.flip and config.augment.crop_padding == 2
    assert (config.epochs, config.lr, config.schedule, config.warmup_epochs) == (3, 0.02, "cosine", 0.0)
    # what described the source run itself is not inherited
    assert config.name is None and config.val_size == 0 and config.ema_decay is None and config.milestones == []
    assert config.gamma == 0.1  # the source's multistep factor would be refused with the fine-tune's cosine
    assert config.test_limit == 40
    explicit = finetune_config(SOURCE_CONFIG, "synthetic", "tiny_cnn",
                               FineTuneOptions(epochs=1, batch_size=32, overrides={"augment.cutout": 0}))
    assert explicit.batch_size == 32 and explicit.augment.cutout == 0 and explicit.weight_decay == 1e-3
    bare = finetune_config({}, "synthetic", "tiny_cnn", FineTuneOptions(epochs=1))  # a checkpoint without a config
    assert bare.model == "tiny_cnn" and bare.batch_size == 128
    with pytest.raises(EffdlError, match="unknown key 'augment.cutot'"):
        finetune_config(SOURCE_CONFIG, "synthetic", "tiny_cnn", FineTuneOptions(epochs=1, overrides={"augment.cutot": 1}))


def test_quantize_fine_tune_inherits_the_source_run_and_keeps_the_evaluated_model(source, tmp_path, monkeypatch):
    from effdl.data import BatchLoader, load_dataset
    from effdl.measure import evaluate
    from effdl.train import Trainer

    trained = []
    real_fit = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda trainer: trained.append(trainer) or real_fit(trainer))
    out = tmp_path / "qat"
    summary = quantize_run(source, QuantizeOptions(method="qat", bits=4, epochs=2, lr=0.02, calibration_images=64,
                                                   device="cpu"), out)
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["weight_decay"] == 1e-3 and written["label_smoothing"] == 0.1 and written["batch_size"] == 64
    assert written["augment"]["cutout"] == 8 and written["augment"]["flip"] is False
    assert written["epochs"] == 2 and written["lr"] == 0.02 and written["val_size"] == 0
    (trainer,) = trained
    assert trainer.config.augment.cutout == 8  # the trainer ran with it, not only the file says so
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2

    # best.safetensors is the final, evaluated model: the last epoch's weights, with the summary's accuracy
    model, meta = load_model(out / "best.safetensors")
    last = {k: v.cpu() for k, v in trainer.model.state_dict().items()}
    assert all(torch.equal(v, last[k].contiguous()) for k, v in model.state_dict().items())
    accuracy = evaluate(model, BatchLoader.for_split(load_dataset("synthetic"), "test"))
    assert (accuracy.correct, accuracy.total) == (summary["correct"], summary["total"])
    assert meta["metrics"]["accuracy"] == summary["accuracy"] and meta["quantize"]["method"] == "qat"
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["kind"] == "quantize" and summary["details"]["training"]["epochs"] == 2
    # the technique's config is stored as data that reads back into the config (it was a repr() string)
    from effdl.compress.quantize import FakeQuantConfig
    from effdl.core.configs import config_from_dict

    stored = config_from_dict(meta["quantize"]["config"])
    assert isinstance(stored, FakeQuantConfig) and stored.weight_bits == 4
    assert config_from_dict(summary["details"]["config"]) == stored


def test_prune_and_quantize_write_one_summary_schema_that_the_report_reads(source, tmp_path):
    from effdl.report import make_report
    from effdl.report.runs import RunSummary

    runs = tmp_path / "runs"
    pruned = prune_checkpoint(source, PruneOptions(method="magnitude", sparsity=0.5, epochs=1, device="cpu"),
                              runs / "p")
    quantized = quantize_run(source, QuantizeOptions(method="ptq-fp16", device="cpu"), runs / "q")
    for summary in (pruned, quantized):
        assert tuple(summary) == CORE_FIELDS  # the same top-level keys, in the same order
        RunSummary.model_validate(summary)
        assert summary["source"] == str(source) and 0 <= summary["source_accuracy"] <= 1
        assert summary["checkpoint"] == "best.safetensors" and summary["evaluated_on"] == "test"
    assert pruned["details"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert quantized["details"]["method"] == "ptq-fp16"
    # prune fine-tunes from the source run's config too, and records it
    assert yaml.safe_load((runs / "p" / "config.yaml").read_text())["weight_decay"] == 1e-3
    assert read_checkpoint_meta(runs / "p" / "best.safetensors")["prune"]["method"] == "magnitude"
    assert not (runs / "q" / "config.yaml").exists()  # no fine-tune, no training config

    report = make_report([runs], tmp_path / "report", scorers=["imt2024"])
    rows = {row["name"]: row for row in report.rows}
    assert {name: row["kind"] for name, row in rows.items()} == {"p": "prune", "q": "quantize"}
    assert rows["p"]["accuracy"] == pruned["accuracy"] and rows["q"]["accuracy"] == quantized["accuracy"]


def test_a_source_config_the_fine_tune_cannot_use_is_refused_before_any_work(tmp_path):
    path = tmp_path / "odd.safetensors"
    save_model(path, create_model("tiny_cnn"), config={"dataset": "synthetic", "augmnt": {"cutout": 8}})
    for run in (lambda out: quantize_run(path, QuantizeOptions(method="qat", epochs=1, device="cpu"), out),
                lambda out: prune_checkpoint(path, PruneOptions(method="magnitude", sparsity=0.5, epochs=1,
                                                                device="cpu"), out)):
        with pytest.raises(EffdlError, match="unknown key 'augmnt'"):
            run(tmp_path / "out")
        assert not (tmp_path / "out").exists()
