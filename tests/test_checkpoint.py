import json

import pytest
import torch

from effdl import EffdlError, create_model
from effdl.checkpoint import load_model, read_checkpoint, save_model, write_checkpoint
from effdl.core import edits
from effdl.core.edits import record_transform, register_transform


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


def test_a_folder_or_a_path_under_a_file_is_refused_before_anything_is_written(tmp_path):
    model = create_model("resnet20", width=0.25)
    (tmp_path / "runs").mkdir()
    with pytest.raises(EffdlError, match="runs is a folder: give the path of a file"):
        save_model(tmp_path / "runs", model)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(EffdlError, match="notes.txt is a file, not a folder"):
        save_model(tmp_path / "notes.txt" / "m.safetensors", model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "runs"] and not any((tmp_path / "runs").iterdir())


def test_what_is_not_an_effdl_checkpoint_is_named_for_what_it_is(tmp_path):
    from safetensors.torch import save_file

    model = create_model("resnet20", width=0.25)
    run = tmp_path / "run"
    save_model(run / "best.safetensors", model)
    with pytest.raises(EffdlError, match=r"run is a folder, not a file: give .*run/best\.safetensors"):
        load_model(run)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    with pytest.raises(EffdlError, match="model.pt is a PyTorch pickle .*safetensors only"):
        load_model(tmp_path / "model.pt")
    torch.save(model.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(EffdlError, match="legacy.pt is a PyTorch pickle"):
        load_model(tmp_path / "legacy.pt")
    # another tool's file, also one whose header length starts with byte 0x80 (as a pickle does)
    for name, metadata in (("plain", None), ("header128", {"x": "a" * 43})):
        save_file({"w": torch.zeros(2)}, tmp_path / f"{name}.safetensors", metadata=metadata)
        assert name == "plain" or (tmp_path / f"{name}.safetensors").read_bytes()[0] == 0x80
        with pytest.raises(EffdlError, match=f"{name}.safetensors is a safetensors file without effdl's metadata"):
            load_model(tmp_path / f"{name}.safetensors")
    tensors, meta = read_checkpoint(run / "best.safetensors")
    meta["spec"]["name"] = "resnet9999"
    write_checkpoint(tmp_path / "renamed.safetensors", tensors, meta)
    with pytest.raises(EffdlError, match=r"renamed.safetensors: unknown model 'resnet9999'"):
        load_model(tmp_path / "renamed.safetensors")


def test_weights_that_do_not_fit_are_reported(tmp_path):
    path = save_model(tmp_path / "m.safetensors", create_model("resnet20", width=0.25))
    tensors, meta = read_checkpoint(path)
    meta["spec"]["kwargs"]["width"] = 0.5
    write_checkpoint(path, tensors, meta)
    with pytest.raises(EffdlError, match="do not fit"):
        load_model(path)


def test_recorded_transforms_are_replayed_on_load(tmp_path, monkeypatch):
    # A checkpoint imports only allowed owners; a technique defined outside effdl is allowed by code.
    monkeypatch.setattr(edits, "ALLOWED_OWNERS", [*edits.ALLOWED_OWNERS, __name__])

    @register_transform("test_widen_fc")
    def widen_fc(model, out_features):
        model.fc = torch.nn.Linear(model.fc.in_features, out_features)

    model = create_model("resnet20", width=0.25)
    widen_fc(model, 13)
    record_transform(model, "test_widen_fc", {"out_features": 13})
    loaded, meta = load_model(save_model(tmp_path / "m.safetensors", model))
    assert loaded.fc.out_features == 13
    assert meta["transforms"] == [{"name": "test_widen_fc", "owner": __name__, "config": {"out_features": 13}}]


def test_model_without_spec_cannot_be_saved(tmp_path):
    with pytest.raises(EffdlError, match="create_model"):
        save_model(tmp_path / "m.safetensors", torch.nn.Linear(2, 2))


def _wrap_ddp(model):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("no gloo backend")
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29517", rank=0, world_size=1)
    return torch.nn.parallel.DistributedDataParallel(model)


@pytest.mark.parametrize("wrap", ["compile", "dataparallel", "ddp", "averaged", "compiled-ema"])
def test_wrapped_models_save_as_the_bare_model(tmp_path, wrap):
    from torch.optim.swa_utils import AveragedModel

    model = create_model("resnet20", num_classes=4, width=0.25)
    model.effdl_data = {"dataset": "synthetic", "input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.25] * 3,
                        "classes": ["a", "b", "c", "d"], "resize": None}
    if wrap == "compile":
        wrapped = torch.compile(model)  # wrapping only: nothing is compiled until it runs
    elif wrap == "dataparallel":
        wrapped = torch.nn.DataParallel(model)
    elif wrap == "ddp":
        wrapped = _wrap_ddp(model)
    elif wrap == "averaged":
        wrapped = AveragedModel(model)
    else:
        wrapped = torch.compile(AveragedModel(model))
    try:
        assert any(k.startswith(("_orig_mod.", "module.")) for k in wrapped.state_dict())
        path = save_model(tmp_path / "m.safetensors", wrapped)
    finally:
        if wrap == "ddp":
            torch.distributed.destroy_process_group()
    loaded, meta = load_model(path)  # was "Missing key(s)" with the wrapper's prefixes
    assert meta["spec"]["name"] == "resnet20" and meta["data"]["classes"] == ["a", "b", "c", "d"]
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), loaded(x))


def test_wrapper_attributes_reach_the_saved_model(tmp_path):
    from effdl.checkpoint import unwrap_model

    bare = create_model("resnet20", width=0.25)
    spec = bare.effdl_spec
    del bare.effdl_spec  # e.g. a copy that lost it; the wrapper still has it
    wrapped = torch.nn.DataParallel(bare)
    wrapped.effdl_spec = spec
    assert unwrap_model(wrapped) is bare and bare.effdl_spec == spec
    _, meta = load_model(save_model(tmp_path / "m.safetensors", wrapped))
    assert meta["spec"] == spec


def test_evaluating_on_data_with_other_classes_is_one_clear_error(tmp_path):
    from effdl.data import BatchLoader
    from effdl.data.datasets import synthetic_dataset
    from effdl.measure.accuracy import check_model_fits_data, evaluate

    model = create_model("resnet20", num_classes=10, width=0.25).eval()
    for classes in (4, 20):  # fewer: was "Target out of bounds"; more: a silently near-zero accuracy
        data = synthetic_dataset(n_train=64, n_test=40, num_classes=classes)
        with pytest.raises(EffdlError, match=f"predicts 10 classes.* has {classes}") as err:
            check_model_fits_data(model, data)
        assert "\n" not in str(err.value)
        with pytest.raises(EffdlError, match=f"predicts 10 classes.*has {classes}"):
            evaluate(model, BatchLoader.for_split(data, "test", batch_size=16))
    data = synthetic_dataset(n_train=64, n_test=40)
    model.effdl_data = {**data.data_meta(), "dataset": "other", "classes": [f"c{i}" for i in range(10)]}
    with pytest.raises(EffdlError, match=r"trained on other.*0: c0 vs class0"):
        check_model_fits_data(model, data)
    model.effdl_data = data.data_meta()
    check_model_fits_data(model, data)  # the same classes pass


@pytest.mark.parametrize("command", [["eval"], ["score", "--eval"]])
def test_cli_eval_refuses_data_with_other_classes(tmp_path, capsys, command):
    from effdl.cli import main

    path = save_model(tmp_path / "m.safetensors", create_model("resnet20", num_classes=4, width=0.25))
    assert main([command[0], str(path), *command[1:], "--data", "synthetic", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "predicts 4 classes" in err and "has 10" in err and "Traceback" not in err
    assert "evaluating" not in err  # refused before any work


@pytest.mark.parametrize("command", [["eval"], ["score", "--eval"], ["quantize", "--method", "ptq-int8"]])
def test_a_checkpoint_with_nan_weights_gives_no_accuracy(tmp_path, capsys, command):
    # argmax of NaN logits is class 0: the "accuracy" would be that class's share, exit 0
    from effdl.cli import main

    model = create_model("tiny_cnn")
    with torch.no_grad():
        next(model.parameters())[0].fill_(float("nan"))
    path = save_model(tmp_path / "m.safetensors", model, config={"dataset": "synthetic", "model": "tiny_cnn"})
    extra = ["--out", str(tmp_path / "q")] if command[0] == "quantize" else []
    assert main([command[0], str(path), *command[1:], "--data", "synthetic", *extra]) == 2
    err = capsys.readouterr().err
    assert "NaN or infinite" in err and "holds NaN" in err and "Traceback" not in err
