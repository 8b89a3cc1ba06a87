"""The foundation commands end to end, in-process, on the synthetic dataset and a tiny model."""

import json

import pytest
import yaml

from effdl.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    code = main(["train", "--data", "synthetic", "--model", "tiny_cnn", "--epochs", "2", "--batch-size", "64",
                 "--lr", "0.05", "--out-dir", str(out), "--name", "tiny", "--progress", "false"])
    assert code == 0
    return out / "tiny"


def test_train_writes_run_and_eval_reproduces_its_accuracy(trained_run, capsys):
    summary = json.loads((trained_run / "summary.json").read_text())
    code, out, _ = run_cli(capsys, "eval", str(trained_run / "best.safetensors"))
    assert code == 0
    measured = json.loads(out)
    assert measured["correct"] == summary["correct"] and measured["total"] == 256
    assert yaml.safe_load((trained_run / "config.yaml").read_text())["model"] == "tiny_cnn"


def test_info_describes_checkpoint(trained_run, capsys):
    code, out, _ = run_cli(capsys, "info", str(trained_run / "last.safetensors"))
    info = json.loads(out)
    assert code == 0 and info["spec"]["name"] == "tiny_cnn" and info["resumable"] is True
    assert info["parameters"] > 0


def test_resume_extends_a_finished_run(trained_run, capsys):
    code, out, _ = run_cli(capsys, "train", "--resume", str(trained_run), "--epochs", "3")
    assert code == 0 and json.loads(out)["epochs"] == 3
    lines = (trained_run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_config_file_and_flag_override(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("dataset: synthetic\nmodel: tiny_cnn\nepochs: 5\nbatch_size: 64\nprogress: false\n"
                      "augment:\n  crop_padding: 2\n")
    code, out, _ = run_cli(capsys, "train", "--config", str(config), "--epochs", "1", "--out-dir", str(tmp_path),
                           "--name", "r")
    assert code == 0
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["augment"]["crop_padding"] == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--model", "resnet19", "--data", "synthetic"], "unknown model 'resnet19'; did you mean"),
        (["train", "--data", "cifar11"], "unknown dataset"),
        (["train", "--epochs", "many", "--data", "synthetic"], "epochs"),
        (["eval", "/nonexistent/best.safetensors"], "checkpoint not found"),
        (["train", "--resume", "/nonexistent/run"], "nothing to resume"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, message):
    code, _, err = run_cli(capsys, *argv, *([] if argv[0] != "train" or "--resume" in argv else ["--out-dir", str(tmp_path)]))
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_malformed_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    code, _, err = run_cli(capsys, "train", "--config", str(bad))
    assert code == 2 and "not valid YAML" in err
    bad.write_text("epochs: 3\nlearning_rate: 0.1\n")
    code, _, err = run_cli(capsys, "train", "--config", str(bad))
    assert code == 2 and "unknown key 'learning_rate'" in err


def test_models_lists_the_zoo(capsys):
    code, out, _ = run_cli(capsys, "models", "--json")
    rows = {row["name"]: row["params"] for row in json.loads(out)}
    assert code == 0 and rows["resnet18"] == 11_173_962 and "wrn_28_10" in rows


def test_same_seed_gives_the_same_run(tmp_path, capsys):
    results = []
    for name in ("a", "b"):
        code, out, _ = run_cli(capsys, "train", "--data", "synthetic", "--model", "tiny_cnn", "--epochs", "1",
                               "--batch-size", "64", "--seed", "3", "--out-dir", str(tmp_path), "--name", name,
                               "--progress", "false")
        results.append(json.loads(out)["correct"])
    metrics = [(tmp_path / n / "metrics.jsonl").read_text() for n in ("a", "b")]
    assert code == 0 and results[0] == results[1]
    assert json.loads(metrics[0])["train_loss"] == json.loads(metrics[1])["train_loss"]


@pytest.mark.parametrize("argv, message", [
    (["prune", "x.safetensors", "--method", "l1-filter", "--layer-ratio", "conv1", "--out", "o"], "GLOB=RATIO"),
    (["quantize", "x.safetensors", "--method", "qat", "--bits", "four", "--out", "o"], "invalid int value"),
    ([], "required: COMMAND"),
])
def test_malformed_arguments_are_one_line_and_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert message in err and err.count("\n") == 1 and "usage:" not in err
