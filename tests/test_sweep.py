"""effdl sweep: grid coverage, failures recorded, pruning on validation accuracy, workers sharing a
journal study, resume with a dead worker's trial retried, bad input as one line. Tiny synthetic
trainings (tiny_cnn, 1-2 epochs on 128 images)."""

from __future__ import annotations

import os
import socket

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from effdl.errors import EffdlError  # noqa: E402
from effdl.search.space import parse_param  # noqa: E402
from effdl.search.sweep import SweepSpec, finish_sweep, load_spec, load_study, resume_sweep, run_sweep  # noqa: E402

BASE = {"model": "tiny_cnn", "dataset": "synthetic", "epochs": 1, "train_limit": 192, "test_limit": 64,
        "val_size": 64, "batch_size": 64, "threads": 1}


def test_values_lists_ranges_and_log_uniform():
    assert parse_param("lr", "1e-4..1e-1").log  # lr ranges are log-uniform by default
    assert not parse_param("momentum", "0.8..0.99").log
    assert parse_param("momentum", "log:0.1..0.9").log
    assert parse_param("depth", "2..4").grid() == [2, 3, 4]
    assert parse_param("width", {"low": 16, "high": 64, "step": 16}).grid() == [16, 32, 48, 64]
    assert parse_param("epochs", 3) is None  # a scalar is fixed
    for bad in ([], "3..1", {"low": 1}, "log:0..1", {"low": 1, "high": 2, "bogus": 1}):
        with pytest.raises(EffdlError):
            parse_param("x", bad)
    with pytest.raises(EffdlError, match="step"):
        parse_param("momentum", "0.8..0.9").grid()


def test_grid_runs_every_combination_once_and_writes_results(tmp_path):
    spec = SweepSpec(name="g", out=str(tmp_path), base=BASE, sampler="grid",
                     params={"lr": [0.05, 0.2], "weight_decay": [0.0, 1e-3]})
    result = run_sweep(spec)
    combos = sorted((r["param:lr"], r["param:weight_decay"]) for r in result.rows)
    assert combos == [(0.05, 0.0), (0.05, 1e-3), (0.2, 0.0), (0.2, 1e-3)]
    assert all(r["state"] == "complete" for r in result.rows)
    for row in result.rows:  # each trial a normal run directory in the study folder
        assert (tmp_path / "g" / f"trial-{row['number']:04d}" / "summary.json").is_file()
        assert row["value"] == row["val_accuracy"]  # chosen on validation, not on test
    best = yaml.safe_load((tmp_path / "g" / "best.yaml").read_text())
    assert best["lr"] == result.best["param:lr"] and best["weight_decay"] == result.best["param:weight_decay"]
    from effdl.train.config import make_config

    make_config(best)  # ready for `effdl train --config`
    assert (tmp_path / "g" / "curves.png").stat().st_size > 0
    assert (tmp_path / "g" / "trials.csv").read_text().count("\n") == 5


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    # batch_size 512 > the 128 training images: that combination fails, the others complete
    spec = SweepSpec(name="f", out=str(tmp_path), base=BASE, sampler="grid", params={"batch_size": [64, 512, 32]})
    result = run_sweep(spec)
    states = {r["param:batch_size"]: r for r in result.rows}
    assert states[512]["state"] == "fail" and "batch size" in states[512]["error"]
    assert states[64]["state"] == states[32]["state"] == "complete"


def test_median_pruner_stops_a_bad_trial_on_validation_accuracy(tmp_path):
    spec = SweepSpec(name="p", out=str(tmp_path), base={**BASE, "epochs": 2}, sampler="random", trials=2,
                     params={"lr": [0.2, 1e-7]}, pruner="median", pruner_startup=1,
                     first=[{"lr": 0.2}, {"lr": 1e-7}])  # the good one first, then one that cannot learn
    result = run_sweep(spec)
    good, bad = sorted(result.rows, key=lambda r: r["number"])
    assert good["state"] == "complete" and good["param:lr"] == 0.2
    assert bad["state"] == "pruned" and "epoch 1" in bad["error"]
    assert not (tmp_path / "p" / "trial-0001" / "summary.json").exists()  # stopped before its end
    assert list(load_study(spec).trials[1].intermediate_values) == [1]


def test_two_workers_share_a_journal_study_each_trial_once(tmp_path):
    spec = SweepSpec(name="w", out=str(tmp_path), base=BASE, sampler="random", trials=4,
                     params={"lr": "0.01..0.3"})
    result = run_sweep(spec, workers=2, threads_per_worker=1)
    numbers = sorted(r["number"] for r in result.rows)
    assert numbers == [0, 1, 2, 3] and all(r["state"] == "complete" for r in result.rows)
    assert len({r["param:lr"] for r in result.rows}) == 4  # the workers drew different values
    hosts_pids = {(t.user_attrs["worker_host"], t.user_attrs["worker_pid"]) for t in load_study(spec).trials}
    assert len(hosts_pids) == 2
    assert sorted(p.name for p in (tmp_path / "w").glob("trial-*")) == [f"trial-{i:04d}" for i in range(4)]


def test_resume_joins_and_retries_a_dead_workers_trial(tmp_path):
    spec = SweepSpec(name="r", out=str(tmp_path), base=BASE, sampler="grid", params={"lr": [0.05, 0.1]})
    from effdl.search.sweep import create_sweep

    create_sweep(spec)
    study = load_study(spec)
    # A worker that died mid-trial: a RUNNING trial tagged with a process id that no longer exists.
    trial = study.ask()
    trial.suggest_categorical("lr", [0.05, 0.1])
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    trial.set_user_attr("worker_host", socket.gethostname())
    trial.set_user_attr("worker_pid", dead)
    result = resume_sweep(tmp_path / "r")
    by_number = {r["number"]: r for r in result.rows}
    assert by_number[trial.number]["state"] == "fail" and "worker died" in by_number[trial.number]["error"]
    completed = sorted(r["param:lr"] for r in result.rows if r["state"] == "complete")
    assert completed == [0.05, 0.1]  # each grid point once: the dead trial's by its retry
    assert len(result.rows) == 3
    again = finish_sweep(tmp_path / "r")  # the study reloads
    assert len(again.rows) == len(result.rows)


def test_bad_input_is_one_line(tmp_path):
    out = str(tmp_path)
    cases = [
        (SweepSpec(name="a", out=out, base=BASE, params={}, trials=2), "nothing to sweep"),
        (SweepSpec(name="b", out=out, base=BASE, params={"no_such_key": [1, 2]}, trials=2), "unknown key 'no_such_key'"),
        (SweepSpec(name="c", out=out, base={**BASE, "val_size": 0}, params={"lr": [0.1]}, trials=2, pruner="median"),
         "validation split"),
        (SweepSpec(name="d", out=out, base=BASE, params={"lr": [0.1, 0.2]}, sampler="grid", trials=1), "grid has 2"),
        (SweepSpec(name="e", out=out, base=BASE, params={"lr": [0.1]}, trials=1,
                   storage="postgresql://nobody@127.0.0.1:1/none"), "storage"),
    ]
    for spec, message in cases:
        with pytest.raises(EffdlError, match=message):
            run_sweep(spec)
    with pytest.raises(EffdlError, match="SQLite"):
        run_sweep(SweepSpec(name="s", out=out, base=BASE, params={"lr": [0.1]}, trials=1,
                            storage=f"sqlite:///{tmp_path}/s.db"), workers=2)
    with pytest.raises(EffdlError, match="no sweep"):
        load_spec(tmp_path / "missing")
    assert not list(tmp_path.glob("*/trial-*"))  # nothing trained


def test_recipe_trials_set_the_key_in_the_stage_whatever_its_form(tmp_path):
    from pathlib import Path

    from effdl.recipes import make_plan
    from effdl.search.sweep import trial_setup

    for stage in ("{model: tiny_cnn, dataset: synthetic, epochs: 1}", "[{model: tiny_cnn, dataset: synthetic, epochs: 1}]"):
        spec = SweepSpec(name="r", out=str(tmp_path), params={"train.lr": [0.05]},
                         recipe=f"stages:\n  - train: {stage}\n")
        recipe = trial_setup(spec, {"train.lr": 0.05}, Path(tmp_path), "trial-0000", plan_only=True)
        (branch,) = make_plan(recipe).branches
        assert branch[0].options.lr == 0.05 and branch[0].options.progress is False
    # a trial whose value leaves a recipe key unread (no fine-tune: no learning rate) runs without it
    spec = SweepSpec(name="r", out=str(tmp_path), params={"prune.epochs": [0, 2]},
                     recipe="stages:\n  - train: {model: tiny_cnn, dataset: synthetic, epochs: 1}\n"
                            "  - prune: {method: l1-filter, sparsity: 0.5, lr: 0.02}\n")
    (branch,) = make_plan(trial_setup(spec, {"prune.epochs": 0}, Path(tmp_path), "trial-0000", plan_only=True)).branches
    assert branch[1].left_out == ("lr",) and branch[1].options.epochs == 0
    (branch,) = make_plan(trial_setup(spec, {"prune.epochs": 2}, Path(tmp_path), "trial-0001", plan_only=True)).branches
    assert branch[1].left_out == () and branch[1].options.lr == 0.02
    # best.yaml: the recipe with the best trial's values, whatever the stage's form
    from effdl.recipes import recipe_from_text
    from effdl.search.sweep import _recipe_with

    listed = SweepSpec(name="r", out=str(tmp_path), params={"train.lr": [0.05]},
                       recipe="stages:\n  - train: [{model: tiny_cnn, dataset: synthetic, epochs: 1}]\n")
    (branch,) = make_plan(recipe_from_text(_recipe_with(listed, {"train.lr": 0.05}))).branches
    assert branch[0].options.lr == 0.05
    # every listed choice is planned before the first trial: a bad one is refused now
    bad = SweepSpec(name="r", out=str(tmp_path), params={"train.optimizer": ["sgd", "adamw"], "train.schedule": ["cosine", "nope"]},
                    recipe="stages:\n  - train: {model: tiny_cnn, dataset: synthetic, epochs: 1}\n", sampler="grid")
    with pytest.raises(EffdlError, match="nope"):
        bad.validate()
    two = SweepSpec(name="r", out=str(tmp_path), params={"train.lr": [0.05]},
                    recipe="stages:\n  - train: [{model: tiny_cnn, dataset: synthetic}, {model: resnet20, dataset: synthetic}]\n")
    with pytest.raises(EffdlError, match="one branch per trial"):
        trial_setup(two, {"train.lr": 0.05}, Path(tmp_path), "trial-0000", plan_only=True)
