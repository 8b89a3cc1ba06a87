"""`effdl export` / `effdl bench` given --data that does not fit the model: one line and exit 2."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from effdl.checkpoint import save_model
from effdl.deploy.onnx import export_onnx, verify_onnx
from effdl.errors import EffdlError
from effdl.models import create_model


@pytest.fixture(autouse=True)
def in_process_cli(monkeypatch):
    # effdl.cli.build_parser imports effdl.cli.__main__, which runs the CLI on import.
    monkeypatch.setitem(sys.modules, "effdl.cli.__main__", types.ModuleType("effdl.cli.__main__"))


def _folder(root: Path, classes: int, size: int, per_class: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    torch.manual_seed(0)
    save_model(path, create_model("tiny_cnn"), config={"dataset": "synthetic"})
    return path


@pytest.mark.parametrize("command", [["export", "--int8"], ["export"], ["bench", "--int8"]])
def test_data_of_other_classes_is_refused_in_one_line(checkpoint, tmp_path, capsys, command):
    from effdl.cli import main

    folder = _folder(tmp_path / "three", classes=3, size=16)
    args = [command[0], str(checkpoint), *command[1:], "--data", f"imagefolder:{folder}", "--calibration-images", "64"]
    if command[0] == "export":
        args += ["--out", str(tmp_path / "m.onnx")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("effdl: error") == 1
    assert "predicts 10 classes" in err.strip().splitlines()[-1]
    assert not (tmp_path / "m.onnx").exists()


def test_check_images_of_another_size_are_one_clear_error(tmp_path):
    model = create_model("tiny_cnn").eval()
    path = export_onnx(model, tmp_path / "m.onnx", input_size=(3, 32, 32))
    with pytest.raises(EffdlError, match="are 3x16x16 but it takes"):
        verify_onnx(model, path, torch.randn(4, 3, 16, 16))
