"""effdl search: spaces, constraints checked before training, strategies (random, evolution,
NSGA-II), full training of the front, recipes out, bad input. Tiny networks on synthetic data."""

from __future__ import annotations

import pytest
import yaml

pytest.importorskip("optuna")

from effdl.errors import EffdlError  # noqa: E402
from effdl.search.arch import Constraints, SearchSpec, load_space, measure_candidate, rank_correlation, run_search  # noqa: E402

SPACE = {"family": "resnet", "stem": 8,
         "stages": [{"width": [4, 8, 16], "depth": [1, 2]}, {"width": [8, 16, 32], "depth": 1}]}
BASE = {"dataset": "synthetic", "train_limit": 192, "test_limit": 64, "val_size": 64, "batch_size": 64, "threads": 1}


def _count_trainings(monkeypatch):
    import effdl.train.run as run

    calls = []
    real = run.train

    def counting(config, *args, **kwargs):
        calls.append(config.model_kwargs)
        return real(config, *args, **kwargs)

    monkeypatch.setattr(run, "train", counting)
    return calls


def test_constraints_reject_before_training(tmp_path, monkeypatch):
    calls = _count_trainings(monkeypatch)
    limit = 2.0e6  # between the smallest candidates (~1.2M MACs) and the largest (~4.4M)
    result = run_search(SearchSpec(name="c", space=SPACE, constraints=Constraints(max_macs=limit), trials=8,
                                   base=BASE, proxy={"epochs": 1}, full_top=0, out=str(tmp_path)))
    infeasible = [r for r in result.rows if r["state"] == "infeasible"]
    assert infeasible and all(r["macs"] > limit and "macs" in r["note"] for r in infeasible)
    assert len(calls) == result.trainings  # only feasible, distinct candidates trained
    from effdl.models import create_model
    from effdl.measure.counting import profile

    for kwargs in calls:  # every trained one really is within the limit
        assert profile(create_model("search_resnet", **kwargs), (1, 3, 32, 32)).macs <= limit


def test_nsga2_returns_a_front_trains_it_and_writes_recipes(tmp_path):
    spec = SearchSpec(name="n", space=SPACE, objectives=["accuracy", "imt2024"], strategy="nsga2", trials=5,
                      population=4, base=BASE, proxy={"epochs": 1}, full={"epochs": 1}, full_top=1, out=str(tmp_path))
    result = run_search(spec)
    assert result.front
    scores = [a["metrics"]["imt2024"] for a in result.front]
    accs = [a["proxy_accuracy"] for a in result.front]
    for i in range(len(scores)):  # no member of the front dominates another
        for j in range(len(scores)):
            assert not (i != j and scores[j] <= scores[i] and accs[j] >= accs[i]
                        and (scores[j] < scores[i] or accs[j] > accs[i]))
    assert sum(a["full_accuracy"] is not None for a in result.front) == 1
    recipe = yaml.safe_load(open(result.front[0]["recipe"]).read().split("\n", 1)[1])
    from effdl.recipes import make_plan, recipe_from_text

    make_plan(recipe_from_text(yaml.safe_dump(recipe)))  # the runner takes it
    assert (tmp_path / "n" / "pareto.png").stat().st_size > 0


def test_evolution_mutates_one_choice_of_a_member(tmp_path):
    result = run_search(SearchSpec(name="e", space=SPACE, strategy="evolution", trials=5, population=2, sample=2,
                                   base=BASE, proxy={"epochs": 1}, full_top=0, out=str(tmp_path)))
    import json

    chosen = [json.loads(r["params_choice"]) for r in result.rows]
    for child in chosen[2:]:  # after the first population, each child differs from an earlier one in one key
        assert any(sum(child[k] != parent[k] for k in child) == 1 for parent in chosen[: chosen.index(child)])


def test_mobilenet_space_and_peak_memory_at_int8():
    space = load_space({"family": "mobilenet", "stem": 8, "stages": [
        {"width": [8, 16], "depth": [1, 2], "kernel": [3, 5], "expansion": [2, 4], "se": [False, True],
         "activation": ["relu", "hswish"], "op": ["conv", "separable"]}]})
    name, kwargs, _ = space.decode({p.name: p.choices[-1] for p in space.params})
    from effdl.models import create_model

    model = create_model(name, **kwargs)
    at32 = measure_candidate(model, (3, 32, 32), Constraints(bits=32), set())
    at8 = measure_candidate(model, (3, 32, 32), Constraints(bits=8), {"imt2024"})
    assert at8["peak_kb"] == pytest.approx(at32["peak_kb"] / 4)
    assert at8["imt2024"] < at32["imt2024"]


def test_rank_correlation():
    assert rank_correlation([0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8])["kendall_tau"] == pytest.approx(1.0)
    assert rank_correlation([0.1, 0.2, 0.3], [0.3, 0.2, 0.1])["spearman_rho"] == pytest.approx(-1.0)
    assert rank_correlation([0.1, 0.2], [0.2, 0.1])["kendall_tau"] is None


def test_bad_input_is_one_line(tmp_path):
    bad_spaces = [({}, "family"), ({"family": "resnet", "stages": []}, "stages"),
                  ({"family": "resnet", "stages": [{"width": [], "depth": 1}]}, "empty"),
                  ({"family": "resnet", "stages": [{"width": 8, "depth": 1}]}, "nothing to search"),
                  ({"family": "resnet", "stages": [{"width": [8, 16], "depth": 1, "kernel": [2]}]}, "kernel"),
                  ({"family": "resnet", "stages": [{"width": [8, 16], "depth": 1, "se": [True]}]}, "unknown key"),
                  ({"family": "vgg", "stages": []}, "family")]
    for space, message in bad_spaces:
        with pytest.raises(EffdlError, match=message):
            load_space(space)
    with pytest.raises(EffdlError, match="not found"):
        load_space(tmp_path / "missing.yaml")
    with pytest.raises(EffdlError, match="smallest seen"):
        run_search(SearchSpec(name="x", space=SPACE, constraints=Constraints(max_macs=1000), trials=3, base=BASE,
                              out=str(tmp_path)))
    assert not list(tmp_path.glob("x/trial-*"))
    for spec, message in [(SearchSpec(name="y", space=SPACE, objectives=["accuracy", "flops"]), "unknown objective"),
                          (SearchSpec(name="y", space=SPACE, strategy="nsga2"), "multi-objective"),
                          (SearchSpec(name="y", space=SPACE, strategy="annealing"), "unknown strategy"),
                          (SearchSpec(name="y", space=SPACE, base={"bogus": 1}), "unknown key 'bogus'")]:
        with pytest.raises(EffdlError, match=message):
            spec.validate()
