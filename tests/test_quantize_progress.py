"""`effdl quantize --epochs N` says what it does while fine-tuning, as train and prune do."""

from __future__ import annotations

import sys
import types

import torch

from effdl.checkpoint import save_model
from effdl.models import create_model


def test_qat_fine_tuning_prints_a_line_per_epoch(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "effdl.cli.__main__", types.ModuleType("effdl.cli.__main__"))
    from effdl.cli import main

    checkpoint = tmp_path / "model.safetensors"
    torch.manual_seed(0)
    save_model(checkpoint, create_model("tiny_cnn"), config={"dataset": "synthetic"})
    assert main(["quantize", str(checkpoint), "--method", "qat", "--bits", "4", "--epochs", "2", "--batch-size", "64",
                 "--calibration-images", "64", "--device", "cpu", "--out", str(tmp_path / "q")]) == 0
    err = capsys.readouterr().err
    assert "fine-tuning for 2 epoch(s)" in err  # was: silent for the whole fine-tune
    assert "epoch 1/2" in err and "epoch 2/2" in err
