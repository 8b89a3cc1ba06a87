import json

import pytest
import torch

from effdl import EffdlError, create_model
from effdl.checkpoint import load_model, read_checkpoint, save_model, write_checkpoint
from effdl.models.transforms import record_transform, register_transform


def test_round_trip_keeps_weights_spec_and_config(tmp_path):
    model = create_model("resnet20", num_classes=7, width=0.5)
    path = save_model(tmp_path / "m.safetensors", model, config={"lr": 0.1}, metrics={"acc": 0.5})
    loaded, meta = load_model(path)
    assert meta["spec"] == {"name": "resnet20", "kwargs": {"num_classes": 7, "width": 0.5}}
    assert meta["config"] == {"lr": 0.1} and meta["metrics"] == {"acc": 0.5}
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), loaded(x))


def test_checkpoint_contains_no_pickle(tmp_path):
    path = save_model(tmp_path / "m.safetensors", create_model("resnet20", width=0.25))
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_len])  # safetensors: JSON header + raw tensors
    assert "effdl" in header["__metadata__"]
    assert b"\x80\x04" not in path.read_bytes()[:2] and b"torch._utils" not in path.read_bytes()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_corrupt_or_missing_checkpoint_is_one_clear_error(tmp_path, damage):
    path = save_model(tmp_path / "m.safetensors", create_model("resnet20", width=0.25))
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    else:
        path.unlink()
    with pytest.raises(EffdlError) as err:
        load_model(path)
    assert "\n" not in str(err.value)


def test_atomic_write_leaves_old_file_when_write_fails(tmp_path):
    path = save_model(tmp_path / "m.safetensors", create_model("resnet20", width=0.25))
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_checkpoint(path, {"model/x": torch.zeros(2)}, {"bad": object()})  # not JSON-able
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_weights_that_do_not_fit_are_reported(tmp_path):
    path = save_model(tmp_path / "m.safetensors", create_model("resnet20", width=0.25))
    tensors, meta = read_checkpoint(path)
    meta["spec"]["kwargs"]["width"] = 0.5
    write_checkpoint(path, tensors, meta)
    with pytest.raises(EffdlError, match="do not fit"):
        load_model(path)


def test_recorded_transforms_are_replayed_on_load(tmp_path):
    @register_transform("test_widen_fc")
    def widen_fc(model, out_features):
        model.fc = torch.nn.Linear(model.fc.in_features, out_features)

    model = create_model("resnet20", width=0.25)
    widen_fc(model, 13)
    record_transform(model, "test_widen_fc", {"out_features": 13})
    loaded, meta = load_model(save_model(tmp_path / "m.safetensors", model))
    assert loaded.fc.out_features == 13
    assert meta["transforms"] == [{"name": "test_widen_fc", "config": {"out_features": 13}}]


def test_model_without_spec_cannot_be_saved(tmp_path):
    with pytest.raises(EffdlError, match="create_model"):
        save_model(tmp_path / "m.safetensors", torch.nn.Linear(2, 2))
