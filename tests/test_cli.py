"""The foundation commands end to end, in-process, on the synthetic dataset and a tiny model."""

import json
import subprocess
import sys

import pytest
import yaml

from effdl.cli import main
from effdl.errors import EffdlError


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


def test_resuming_a_finished_run_is_refused_and_keeps_its_summary(trained_run, capsys):
    before = (trained_run / "summary.json").read_text()
    code, _, err = run_cli(capsys, "train", "--resume", str(trained_run))
    assert code == 2 and "already finished its 2 epochs" in err and err.count("\n") == 1
    assert (trained_run / "summary.json").read_text() == before  # was: time_s and images_per_s 0.0 overwritten


def test_a_test_limit_is_recorded_where_the_accuracy_was_measured(tmp_path, capsys):
    code, _, _ = run_cli(capsys, "train", "--data", "synthetic", "--model", "tiny_cnn", "--epochs", "1",
                         "--batch-size", "64", "--test-limit", "100", "--out", str(tmp_path / "r"), "--progress", "false")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert code == 0 and summary["total"] == 100
    assert summary["evaluated_on"] == "test (balanced subset of 100)"  # was "test", as if on the whole split


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
        # a flag's value that is not YAML: one line naming the flag, not yaml's traceback
        (["train", "--data", "synthetic", "--model-kwargs", "{width: "], "--model-kwargs: '{width: ' is not a valid"),
        (["distill", "--teacher", "t.safetensors", "--student", "tiny_cnn", "--milestones", "[3"], "--milestones: '[3'"),
        (["distill", "--teacher", "t.safetensors", "--student", "tiny_cnn", "--method-options", "{a: "],
         "--method-options: '{a: ' is not a valid"),
        (["grid", "--data", "synthetic", "--augment.cutout", "[1", "--out", "g.png"], "--augment.cutout: '[1'"),
        # names and paths are text, never YAML: "@exp" is a name, refused only for what it names
        (["train", "--data", "synthetic", "--model", "@exp"], "unknown model '@exp'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, message):
    code, _, err = run_cli(capsys, *argv, *([] if argv[0] != "train" or "--resume" in argv else ["--out-dir", str(tmp_path)]))
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_an_output_that_is_a_folder_or_a_file_system_refusal_is_one_line(trained_run, capsys, tmp_path, monkeypatch):
    code, _, err = run_cli(capsys, "export", str(trained_run / "best.safetensors"), "--out", str(tmp_path))
    assert code == 2 and "is a folder: give the path of a file" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "export", str(trained_run), "--out", str(tmp_path / "m.onnx"))
    assert code == 2 and f"give {trained_run / 'best.safetensors'}" in err and err.count("\n") == 1

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/somewhere/.model.onnx.x1.tmp", None, "/somewhere/model.onnx")

    monkeypatch.setattr("effdl.fileio.os.replace", refused)
    code, _, err = run_cli(capsys, "export", str(trained_run / "best.safetensors"), "--out", str(tmp_path / "m.onnx"))
    assert code == 2 and err.splitlines()[-1] == "effdl: error: Permission denied: /somewhere/model.onnx"
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # the temporary file went too


def test_malformed_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    code, _, err = run_cli(capsys, "train", "--config", str(bad))
    assert code == 2 and "not valid YAML" in err
    bad.write_text("epochs: 3\nlearning_rate: 0.1\n")
    code, _, err = run_cli(capsys, "train", "--config", str(bad))
    assert code == 2 and "unknown key 'learning_rate'" in err
    bad.write_text("epoch: 3\naugment:\n  cutot: 4\n")  # close names, at the top and in a section
    for command in (["train"], ["distill", "--teacher", "t.safetensors"]):
        code, _, err = run_cli(capsys, *command, "--config", str(bad))
        assert code == 2 and "unknown key 'epoch' (did you mean epochs?)" in err
        assert "unknown key 'augment.cutot' (did you mean cutout?)" in err


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
def test_malformed_arguments_are_one_line_and_exit_2(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.safetensors").write_bytes(b"")  # exists: the argument errors come first
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert message in err and err.count("\n") == 1 and "usage:" not in err


HEAVY_MODULES = ("torch", "torchvision", "onnx", "onnxruntime", "torch_pruning", "matplotlib")


@pytest.mark.parametrize("command", ["", "train", "eval"])
def test_help_imports_no_heavy_modules(command):
    """`effdl --help`, `effdl train --help` and the parsing of a command import no torch, onnx,
    torch-pruning or matplotlib (they cost seconds): the CLI imports them inside `run()`."""
    import subprocess
    import sys

    code = ("import sys, effdl.cli as c\n"
            f"c.build_parser({command!r})\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY_MODULES!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_option_of_every_command_has_help():
    import argparse

    from effdl.cli import build_parser

    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [f"{name} {action.option_strings or action.dest}"
               for name, sub in subparsers.choices.items() for action in sub._actions
               if not (action.help or "").strip() or (action.help or "").lstrip().startswith("(default")]
    assert len(subparsers.choices) >= 12 and missing == []


@pytest.mark.parametrize("argv, message", [
    (["train", "--epoch", "2"], "unrecognized arguments: --epoch"),  # no abbreviations of --epochs
    (["eval", "x.safetensors", "--ta"], "unrecognized arguments: --ta"),
    (["train", "--no-such-flag"], "unrecognized arguments"),
])
def test_abbreviated_or_unknown_flags_are_errors(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.safetensors").write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err
    assert err.startswith(f"effdl {argv[0]}: error:") and f"(see 'effdl {argv[0]} --help')" in err  # its own help


def test_version(capsys):
    import effdl

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"effdl {effdl.__version__}"


def test_boolean_config_flags_take_no_value_or_true_false():
    from effdl.cli import build_parser
    from effdl.cli.train import config_from_args

    parser = build_parser("train")

    def config(*flags):
        return config_from_args(parser.parse_args(["train", *flags]))

    assert config("--compile").compile is True and config("--compile", "true").compile is True
    assert config("--compile", "false").compile is False and config().compile is False
    assert config("--tta", "--epochs", "3").tta is True  # a bare flag does not swallow the next one
    assert config("--augment.flip", "false").augment.flip is False


def test_train_out_is_out_dir_and_name():
    from effdl.cli import build_parser
    from effdl.cli.train import config_from_args

    parser = build_parser("train")
    config = config_from_args(parser.parse_args(["train", "--out", "some/where/r1"]))
    assert (config.out_dir, config.name) == ("some/where", "r1")
    with pytest.raises(EffdlError, match="not both"):
        config_from_args(parser.parse_args(["train", "--out", "a/b", "--name", "c"]))


def test_lazy_package_exports_all_resolve():
    """Every name the lazily importing packages export exists in the module they name."""
    import effdl
    import effdl.data
    import effdl.train

    for package in (effdl, effdl.data, effdl.train):
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"


def test_quantize_sensitivity_plot_fits_the_axis_to_the_data(tmp_path, monkeypatch):
    """A 1-point drop must be visible: the axis spans the data around the baseline, not 0-100%."""
    import matplotlib.figure

    from effdl.compress.quantize.sensitivity import LayerSensitivity, plot_sensitivity

    results = [LayerSensitivity(f"l{i}", 4, a, 100 * (0.913 - a)) for i, a in enumerate((0.910, 0.903, 0.912))]
    limits = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: (limits.append(fig.axes[0].get_ylim()), save(fig, *a, **k)))
    assert plot_sensitivity(0.913, results, tmp_path / "s.png").is_file()
    (low, high), = limits
    assert 89 < low < 90.3 and 91.3 < high < 93  # the baseline line and every bar inside, 1 point spans >1/4


def test_prune_help_names_every_method(capsys):
    from effdl.pipelines.prune import METHODS

    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    text = capsys.readouterr().out
    assert all(method in text for method in METHODS)


def test_score_help_names_every_scorer(capsys):
    from effdl.measure.scoring import TRACKS

    with pytest.raises(SystemExit):
        main(["score", "--help"])
    text = capsys.readouterr().out
    assert all(scorer in text for scorer in TRACKS)


def test_report_help_names_every_scorer_and_export_every_exporter(capsys):
    from effdl.cli.export import EXPORTER_NAMES
    from effdl.deploy.onnx import EXPORTERS
    from effdl.measure.scoring import scorer_names

    with pytest.raises(SystemExit):
        main(["report", "--help"])
    text = capsys.readouterr().out
    assert all(scorer in text for scorer in scorer_names())
    assert set(EXPORTER_NAMES) == set(EXPORTERS)


@pytest.mark.parametrize("command", ["export", "report", "bench", "quantize", "prune", "score", "eval", "train"])
def test_every_command_rejects_a_bad_flag_without_importing_torch(command):
    code = ("import sys\nfrom effdl.cli import main\ntry:\n    main([%r, '--no-such-flag'])\n"
            "except SystemExit as e:\n    assert e.code == 2, e.code\n"
            "heavy = sorted(m for m in ('torch', 'onnx', 'torch_pruning', 'matplotlib') if m in sys.modules)\n"
            "print(heavy)\n") % command
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", (out.stdout, out.stderr[-500:])


def test_warnings_are_one_line_when_effdl_runs_as_the_program(monkeypatch, capsys):
    import warnings
    from pathlib import Path

    import effdl

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # put back after the test
    monkeypatch.setattr(sys, "argv", ["effdl", "models", "--json"])
    assert main() == 0
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn_explicit("calibrating on all 64 training images\n(asked for 96)", UserWarning,
                               str(Path(effdl.__file__).parent / "pipelines" / "quantize.py"), 140)
        warnings.warn_explicit("a library's deprecation", FutureWarning, "/site/torch/onnx/x.py", 7)
        warnings.warn_explicit("in a checkout named effdl", UserWarning, "/home/effdl/.venv/torch/y.py", 3)
    err = capsys.readouterr().err.splitlines()
    assert err == ["effdl: warning: calibrating on all 64 training images (asked for 96)",
                   "effdl: warning: a library's deprecation (FutureWarning from /site/torch/onnx/x.py:7)",
                   "effdl: warning: in a checkout named effdl (UserWarning from /home/effdl/.venv/torch/y.py:3)"]
