"""Architecture search under constraints: a YAML space over a parametric family
(effdl.models.searchable), constraints checked with the counting engine before any training,
random / regularized-evolution / NSGA-II strategies, proxy training, full training of the front.

A space file:

    family: resnet                 # resnet (search_resnet) or mobilenet (search_mobilenet)
    stem: [16, 24]                 # a list is a choice, a scalar is fixed
    resolution: [32]               # optional: the training image size (image_size)
    stages:
      - {width: [16, 24, 32], depth: [1, 2, 3], kernel: [3, 5], op: [conv, separable]}
      - {width: [32, 48, 64], depth: [1, 2, 3]}
      - {width: [64, 96, 128], depth: [1, 2, 3]}
    # mobilenet stages also take expansion, se, activation (relu, hswish); `last: [0, 256]`

A candidate is the model name plus `model_kwargs` ({stem, stages: [...]}), so a searched network is
a normal zoo model that checkpoints rebuild. Candidates that break a constraint are recorded with
the reason and never trained (under NSGA-II they are told to optuna as infeasible through its
constraints_func, with accuracy 0 and their measured costs).

Strategies: random (optuna RandomSampler); evolution: regularized evolution (Real et al. 2019,
"aging evolution": a tournament of `sample` members of the population, the winner's child differs
in one choice, the oldest member leaves), on the first objective; nsga2 (optuna NSGAIISampler with
constraints). Each trained candidate is a proxy training (`proxy` keys: few epochs, a subset, a
validation split); the front (or the top by accuracy) is then trained fully (`full` keys), and the
proxy's rank correlation with full training is reported (Kendall tau and Spearman rho).
"""

from __future__ import annotations

import json
import math
import random
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from effdl.console import say
from effdl.errors import EffdlError
from effdl.search.space import Param

FAMILIES = {"resnet": "search_resnet", "mobilenet": "search_mobilenet"}
STRATEGIES = ("random", "evolution", "nsga2")
COSTS = ("macs", "params", "imt2024", "micronet", "peak_kb", "latency_ms")  # objectives to minimise


# ---------------------------------------------------------------------------------------------------
# The space


@dataclass
class ArchSpace:
    family: str
    params: list[Param]  # every choice: stem, s1.width, ..., resolution
    fixed: dict[str, Any]  # keys with one value
    stage_count: int

    def decode(self, values: dict[str, Any]) -> tuple[str, dict[str, Any], int | None]:
        """(model name, model_kwargs, resolution or None) of one candidate's choices."""
        chosen = {**self.fixed, **values}
        stages = []
        for i in range(1, self.stage_count + 1):
            prefix = f"s{i}."
            stages.append({k[len(prefix):]: v for k, v in chosen.items() if k.startswith(prefix)})
        kwargs: dict[str, Any] = {"stages": stages}
        for key in ("stem", "last"):
            if key in chosen:
                kwargs[key] = chosen[key]
        return FAMILIES[self.family], kwargs, chosen.get("resolution")

    def distributions(self) -> dict[str, Any]:
        return {p.name: p.distribution() for p in self.params}

    def size(self) -> int:
        return math.prod(len(p.choices) for p in self.params)


def load_space(source: str | Path | dict[str, Any]) -> ArchSpace:
    """Read a search space (module docstring) from a YAML file or a mapping.

    Raises EffdlError for a missing file, an unknown family or key, an empty choice list, a space
    with nothing to choose, or choices the family cannot build (an even kernel, a zero width).
    """
    from effdl.models.searchable import MOBILENET_STAGE_KEYS, RESNET_STAGE_KEYS

    where = "the search space"
    if not isinstance(source, dict):
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise EffdlError(f"search space file not found: {path}")
        try:
            source = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise EffdlError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(source, dict):
        raise EffdlError(f"{where}: a search space is a mapping with family and stages")
    family = source.get("family")
    if family not in FAMILIES:
        raise EffdlError(f"{where}: family must be one of {', '.join(FAMILIES)}, got {family!r}")
    allowed_top = {"family", "stem", "stages", "resolution"} | ({"last"} if family == "mobilenet" else set())
    unknown = set(source) - allowed_top
    if unknown:
        raise EffdlError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; a {family} space has "
                         f"{', '.join(sorted(allowed_top))}")
    stage_keys = RESNET_STAGE_KEYS if family == "resnet" else MOBILENET_STAGE_KEYS
    stages = source.get("stages")
    if not isinstance(stages, list) or not stages:
        raise EffdlError(f"{where}: 'stages' must be a non-empty list of stage mappings")
    entries: dict[str, Any] = {k: source[k] for k in ("stem", "last", "resolution") if k in source}
    for i, stage in enumerate(stages, start=1):
        if not isinstance(stage, dict):
            raise EffdlError(f"{where}: stage {i} must be a mapping such as {{width: [16, 32], depth: [1, 2]}}")
        bad = set(stage) - stage_keys
        if bad:
            raise EffdlError(f"{where}: stage {i} has unknown key(s) {', '.join(sorted(map(str, bad)))}; "
                             f"a {family} stage has {', '.join(sorted(stage_keys))}")
        for key in ("width", "depth"):
            if key not in stage:
                raise EffdlError(f"{where}: stage {i} needs '{key}'")
        entries.update({f"s{i}.{k}": v for k, v in stage.items()})
    params, fixed = [], {}
    for name, value in entries.items():
        choices = value if isinstance(value, list) else [value]
        if not choices:
            raise EffdlError(f"{where}: '{name}' has an empty list of choices")
        _check_choices(where, name, choices)
        if len(choices) == 1:
            fixed[name] = choices[0]
        else:
            params.append(Param(name, "categorical", choices=tuple(choices)))
    if not params:
        raise EffdlError(f"{where}: nothing to search (every key has one value); give lists of choices")
    return ArchSpace(family, params, fixed, len(stages))


def _check_choices(where: str, name: str, choices: list[Any]) -> None:
    leaf = name.rsplit(".", 1)[-1]
    for value in choices:
        ok = True
        if leaf in ("width", "depth", "stem", "resolution"):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= (8 if leaf == "resolution" else 1)
        elif leaf == "kernel":
            ok = isinstance(value, int) and value >= 1 and value % 2 == 1
        elif leaf == "op":
            ok = value in ("conv", "separable")
        elif leaf == "activation":
            ok = value in ("relu", "hswish")
        elif leaf == "expansion":
            ok = isinstance(value, (int, float)) and value >= 1
        elif leaf == "se":
            ok = isinstance(value, bool)
        elif leaf == "last":
            ok = isinstance(value, int) and value >= 0
        if not ok:
            raise EffdlError(f"{where}: '{name}' cannot be {value!r}")


# ---------------------------------------------------------------------------------------------------
# Constraints, measured before any training


@dataclass
class Constraints:
    """Limits checked on each candidate with the counting engine (None: no limit)."""

    max_macs: float | None = None
    max_params: float | None = None
    max_score: float | None = None  # of `scorer` at `bits`
    scorer: str = "imt2024"
    bits: int = 32  # weights and activations assumed quantized to this many bits for score and peak
    max_peak_kb: float | None = None  # peak activation memory at `bits`, in KiB (1024 bytes)
    max_latency_ms: float | None = None  # ONNX Runtime, batch 1, one thread

    def limits(self) -> dict[str, float]:
        """metric name -> limit, for the limits that are set."""
        named = {"macs": self.max_macs, "params": self.max_params, self.scorer: self.max_score,
                 "peak_kb": self.max_peak_kb, "latency_ms": self.max_latency_ms}
        return {k: float(v) for k, v in named.items() if v is not None}


def _profile_at_bits(prof: Any, bits: int) -> Any:
    """The profile as if conv/linear weights and every activation were stored at `bits` (a planned
    quantization: the counts are the model's, the bit-widths the assumption)."""
    import dataclasses

    from effdl.measure.counting import WEIGHTED_KINDS

    layers = [dataclasses.replace(r, act_bits=bits, weight_bits=bits if r.kind in WEIGHTED_KINDS else r.weight_bits)
              for r in prof.layers]
    params = [dataclasses.replace(p, bits=bits) if p.layer is not None and prof.layers[p.layer].kind in WEIGHTED_KINDS
              else p for p in prof.parameters]
    return dataclasses.replace(prof, layers=layers, parameters=params)


def measure_candidate(model: Any, input_size: tuple[int, int, int], constraints: Constraints,
                      wanted: set[str]) -> dict[str, float]:
    """The candidate's costs: macs, params, peak_kb, scores (at `constraints.bits`), and latency_ms
    when a latency limit or objective asks for it (it exports and times the model: seconds)."""
    from effdl.measure.counting import profile
    from effdl.measure.scoring import score

    prof = profile(model, (1, *input_size))
    bits = constraints.bits
    metrics = {"macs": float(prof.macs), "params": float(prof.params),
               "peak_kb": prof.peak_activation_bytes * bits / 32 / 1024}
    at_bits = _profile_at_bits(prof, bits) if bits != 32 else prof
    for scorer in {"imt2024", "micronet", constraints.scorer} & (wanted | {constraints.scorer}):
        track = "cifar100" if scorer == "micronet" else None
        metrics[scorer] = float(score(at_bits, scorer, track).score)
    if "latency_ms" in wanted:
        from effdl.deploy.bench import onnx_deploy_latency

        metrics["latency_ms"] = float(onnx_deploy_latency(model, input_size, threads=1)[0])
    return metrics


def violations(metrics: dict[str, float], limits: dict[str, float]) -> dict[str, float]:
    """metric -> relative excess (value / limit - 1) of each broken limit."""
    return {k: metrics[k] / limit - 1 for k, limit in limits.items() if metrics[k] > limit}


# ---------------------------------------------------------------------------------------------------
# The search


@dataclass
class SearchSpec:
    """An architecture search (module docstring)."""

    name: str
    space: dict[str, Any]  # the space mapping (load_space)
    objectives: list[str] = field(default_factory=lambda: ["accuracy"])  # accuracy + optional costs
    constraints: Constraints = field(default_factory=Constraints)
    strategy: str = "random"
    trials: int = 20
    base: dict[str, Any] = field(default_factory=dict)  # training keys every training shares (dataset...)
    proxy: dict[str, Any] = field(default_factory=lambda: {"epochs": 2})  # the search's short trainings
    full: dict[str, Any] = field(default_factory=lambda: {"epochs": 30})  # the front's full trainings
    full_top: int = 3  # front members trained fully (0: none)
    population: int = 8  # evolution: population size
    sample: int = 3  # evolution: tournament size
    seed: int = 0
    out: str = "runs"

    @property
    def directory(self) -> Path:
        return Path(self.out) / self.name

    def validate(self) -> ArchSpace:
        if self.strategy not in STRATEGIES:
            raise EffdlError(f"unknown strategy '{self.strategy}'; strategies: {', '.join(STRATEGIES)}")
        if not self.objectives or self.objectives[0] != "accuracy":
            raise EffdlError(f"the first objective must be accuracy, got {','.join(self.objectives) or 'none'}")
        for name in self.objectives[1:]:
            if name not in COSTS:
                raise EffdlError(f"unknown objective '{name}'; objectives: accuracy, {', '.join(COSTS)}")
        if self.strategy == "nsga2" and len(self.objectives) < 2:
            raise EffdlError("nsga2 is multi-objective: give --objective accuracy,COST (imt2024, macs, latency_ms...)")
        if self.trials < 1:
            raise EffdlError(f"trials must be at least 1, got {self.trials}")
        from effdl.measure.scoring import scorer_names

        if self.constraints.scorer not in scorer_names():
            raise EffdlError(f"unknown scorer '{self.constraints.scorer}'; scorers: {', '.join(scorer_names())}")
        if not 1 <= self.constraints.bits <= 32:
            raise EffdlError(f"bits must be in 1..32, got {self.constraints.bits}")
        for name, limit in self.constraints.limits().items():
            if limit <= 0:
                raise EffdlError(f"the limit on {name} must be positive, got {limit}")
        from effdl.train.config import make_config

        make_config({**self.base, **self.proxy}, source="search proxy training keys")
        make_config({**self.base, **self.full}, source="search full training keys")
        return load_space(self.space)


@dataclass
class SearchResult:
    directory: Path
    rows: list[dict[str, Any]]
    front: list[dict[str, Any]]  # the chosen architectures, with full accuracies when trained
    correlation: dict[str, Any]
    trainings: int  # proxy trainings run (infeasible candidates never train)
    files: dict[str, str]


def _mutate(values: dict[str, Any], space: ArchSpace, rng: random.Random) -> dict[str, Any]:
    child = dict(values)
    param = rng.choice(space.params)
    child[param.name] = rng.choice([c for c in param.choices if c != values[param.name]])
    return child


def _train(spec: SearchSpec, model_name: str, kwargs: dict[str, Any], resolution: int | None, keys: dict[str, Any],
           name: str) -> dict[str, Any]:
    from effdl.train.config import make_config
    from effdl.train.run import train

    values = {"progress": False, **spec.base, **keys, "model": model_name, "model_kwargs": kwargs,
              "out_dir": str(spec.directory), "name": name}
    if resolution is not None:
        values["image_size"] = resolution
    result = train(make_config(values, source=f"search {spec.name}, {name}"))
    return json.loads((Path(result.run_dir) / "summary.json").read_text())


def _accuracy(summary: dict[str, Any]) -> float:
    return float(summary["best_eval_accuracy"] if summary.get("selected_on") == "val" else summary["accuracy"])


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def rank_correlation(proxy: list[float], full: list[float]) -> dict[str, Any]:
    """Kendall tau (b) and Spearman rho of two accuracy lists (scipy when installed, else computed
    here); None with the reason when fewer than 3 pairs or a constant list."""
    if len(proxy) < 3:
        return {"kendall_tau": None, "spearman_rho": None, "pairs": len(proxy), "note": "fewer than 3 fully trained"}
    if len(set(proxy)) == 1 or len(set(full)) == 1:
        return {"kendall_tau": None, "spearman_rho": None, "pairs": len(proxy), "note": "constant accuracies"}
    try:
        from scipy.stats import kendalltau, spearmanr

        return {"kendall_tau": float(kendalltau(proxy, full).statistic),
                "spearman_rho": float(spearmanr(proxy, full).statistic), "pairs": len(proxy)}
    except ImportError:
        n = len(proxy)
        concordant = discordant = tie_p = tie_f = 0
        for i in range(n):
            for j in range(i + 1, n):
                a, b = proxy[i] - proxy[j], full[i] - full[j]
                if a == 0 and b == 0:
                    continue
                if a == 0:
                    tie_p += 1
                elif b == 0:
                    tie_f += 1
                elif a * b > 0:
                    concordant += 1
                else:
                    discordant += 1
        tau = (concordant - discordant) / math.sqrt((concordant + discordant + tie_p) * (concordant + discordant + tie_f))
        rp, rf = _ranks(proxy), _ranks(full)
        mp, mf = sum(rp) / n, sum(rf) / n
        cov = sum((x - mp) * (y - mf) for x, y in zip(rp, rf))
        rho = cov / math.sqrt(sum((x - mp) ** 2 for x in rp) * sum((y - mf) ** 2 for y in rf))
        return {"kendall_tau": tau, "spearman_rho": rho, "pairs": n}


def run_search(spec: SearchSpec) -> SearchResult:
    """Run the search (module docstring) into `<out>/<name>/`: trials.csv, pareto.png, search.json,
    recipes/arch-NNNN.yaml (one `effdl run` recipe per chosen architecture).

    Raises EffdlError for an invalid spec or space (before anything runs), or when no candidate met
    the constraints (naming, per broken constraint, the smallest value seen)."""
    import optuna
    from optuna.trial import TrialState

    from effdl.models import create_model
    from effdl.search.storage import open_storage

    space = spec.validate()
    directory = spec.directory
    if (directory / "search.yaml").exists():
        raise EffdlError(f"{directory} already holds a search; pick another --name")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "search.yaml").write_text(yaml.safe_dump(asdict(spec), sort_keys=False))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    limits = spec.constraints.limits()
    wanted = set(spec.objectives[1:]) | set(limits)
    costs = spec.objectives[1:]

    def constraints_func(trial: Any) -> list[float]:
        return list(trial.user_attrs.get("constraints", [0.0] * max(1, len(limits))))

    # optuna >= 5 takes each trial's constraint values from Trial.set_constraint; older versions
    # from the sampler's constraints_func.
    per_trial_constraints = hasattr(optuna.trial.Trial, "set_constraint")
    if spec.strategy == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(
            seed=spec.seed, population_size=max(4, spec.population),
            **({} if per_trial_constraints else {"constraints_func": constraints_func}))
    else:
        sampler = optuna.samplers.RandomSampler(seed=spec.seed)
    study = optuna.create_study(study_name=spec.name, storage=open_storage(None, directory), sampler=sampler,
                                directions=["maximize"] + ["minimize"] * len(costs))
    rng = random.Random(spec.seed)
    population: deque[tuple[dict[str, Any], float]] = deque()
    distributions = space.distributions()
    smallest: dict[str, float] = {}
    trainings = 0
    num_classes_probe = 10
    seen: dict[str, int] = {}  # chosen values (JSON) -> the first trial that had them
    for number in range(spec.trials):
        if spec.strategy == "evolution" and len(population) >= min(spec.population, spec.trials):
            contenders = rng.sample(list(population), min(spec.sample, len(population)))
            parent = max(contenders, key=lambda member: member[1])[0]
            study.enqueue_trial(_mutate(parent, space, rng))
        trial = study.ask(distributions)
        values = dict(trial.params)
        key = json.dumps(values, sort_keys=True)
        if key in seen:  # the same architecture again: its measurements and training stand
            earlier = study.trials[seen[key]]
            for name in ("metrics", "model", "constraints", "infeasible", "run_dir", "test_accuracy", "error"):
                if name in earlier.user_attrs:
                    trial.set_user_attr(name, earlier.user_attrs[name])
            if per_trial_constraints:
                for name, value in zip(limits or ["none"], earlier.user_attrs.get("constraints", [0.0])):
                    trial.set_constraint(name, value)
            trial.set_user_attr("duplicate_of", earlier.number)
            study.tell(trial, earlier.values, state=earlier.state) if earlier.state == TrialState.COMPLETE \
                else study.tell(trial, state=earlier.state)
            continue
        seen[key] = trial.number
        model_name, kwargs, resolution = space.decode(values)
        size = (3, resolution or 32, resolution or 32)
        model = create_model(model_name, num_classes=num_classes_probe, **kwargs)
        metrics = measure_candidate(model, size, spec.constraints, wanted)
        for key, value in metrics.items():
            smallest[key] = min(smallest.get(key, value), value)
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("model", {"name": model_name, "kwargs": kwargs, "resolution": resolution})
        broken = violations(metrics, limits)
        constraint_values = [max(0.0, metrics[k] / v - 1) for k, v in limits.items()] or [0.0]
        trial.set_user_attr("constraints", constraint_values)
        if per_trial_constraints:
            for key, value in zip(limits or ["none"], constraint_values):
                trial.set_constraint(key, value)
        if broken:
            reason = ", ".join(f"{k} {metrics[k]:.4g} > {limits[k]:.4g}" for k in broken)
            trial.set_user_attr("infeasible", reason)
            if spec.strategy == "nsga2":  # optuna sees it as infeasible through its constraint values
                study.tell(trial, [0.0] + [metrics[c] for c in costs])
            else:
                study.tell(trial, state=TrialState.PRUNED)
            say(f"candidate {trial.number}: infeasible ({reason}), not trained")
            continue
        trainings += 1
        try:
            summary = _train(spec, model_name, kwargs, resolution, spec.proxy, f"trial-{trial.number:04d}")
        except Exception as exc:  # noqa: BLE001  a candidate that cannot train is recorded, the search goes on
            from effdl.search.workers import error_line

            trial.set_user_attr("error", error_line(exc))
            study.tell(trial, state=TrialState.FAIL)
            say(f"candidate {trial.number}: failed: {error_line(exc)}")
            if isinstance(exc, KeyboardInterrupt):
                raise
            continue
        accuracy = _accuracy(summary)
        trial.set_user_attr("run_dir", str(directory / f"trial-{trial.number:04d}"))
        trial.set_user_attr("test_accuracy", summary.get("accuracy"))
        study.tell(trial, [accuracy] + [metrics[c] for c in costs])
        say(f"candidate {trial.number}: proxy accuracy {accuracy:.4f}, " +
             ", ".join(f"{k} {metrics[k]:.4g}" for k in ("macs", "params", *costs) if k in metrics))
        if spec.strategy == "evolution":
            population.append((values, accuracy))
            if len(population) > spec.population:
                population.popleft()  # aging: the oldest leaves, whatever its fitness
    trained = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE
               and "infeasible" not in t.user_attrs and "duplicate_of" not in t.user_attrs]
    if not trained:
        if limits and trainings == 0:
            seen = ", ".join(f"{k} <= {v:.4g} (smallest seen {smallest.get(k, float('nan')):.4g})"
                             for k, v in limits.items())
            raise EffdlError(f"no candidate of {spec.trials} sampled meets the constraints: {seen}; "
                             f"loosen them or shrink the space; trials in {directory}/")
        raise EffdlError(f"no candidate finished its proxy training; see {directory}/ trials")
    return _finish(spec, study, space, trained, trainings, limits)


def _front(spec: SearchSpec, trained: list[Any]) -> list[Any]:
    if len(spec.objectives) < 2:
        return sorted(trained, key=lambda t: -t.values[0])[: max(1, spec.full_top)]
    from effdl.report.pareto import pareto_front

    cost = spec.objectives[1]
    metric = lambda t: t.user_attrs["metrics"][cost]  # noqa: E731
    indices = pareto_front([(metric(t), t.values[0]) for t in trained])
    return [trained[i] for i in indices]


def _finish(spec: SearchSpec, study: Any, space: ArchSpace, trained: list[Any], trainings: int,
            limits: dict[str, float]) -> SearchResult:
    import csv

    from effdl.search.plots import plot_pareto

    directory = spec.directory
    front = _front(spec, trained)
    chosen = sorted(front, key=lambda t: -t.values[0])[: spec.full_top] if spec.full_top else []
    full_accuracy: dict[int, float] = {}
    for t in chosen:
        model = t.user_attrs["model"]
        say(f"full training of candidate {t.number}")
        summary = _train(spec, model["name"], model["kwargs"], model["resolution"], spec.full, f"full-{t.number:04d}")
        full_accuracy[t.number] = _accuracy(summary)
        t.user_attrs["full_test_accuracy"] = summary.get("accuracy")
    pairs = [(t.values[0], full_accuracy[t.number]) for t in chosen]
    correlation = rank_correlation([p for p, _ in pairs], [f for _, f in pairs])
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        rows.append({"number": t.number, "state": "infeasible" if "infeasible" in attrs else t.state.name.lower(),
                     "proxy_accuracy": t.values[0] if t.values and "infeasible" not in attrs else None,
                     "full_accuracy": full_accuracy.get(t.number), **(attrs.get("metrics") or {}),
                     "params_choice": json.dumps(t.params), "note": attrs.get("infeasible") or attrs.get("error")})
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(directory / "trials.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    recipes_dir = directory / "recipes"
    recipes_dir.mkdir(exist_ok=True)
    front_rows = []
    for t in front:
        model = t.user_attrs["model"]
        train_keys = {**spec.base, **spec.full, "model": model["name"], "model_kwargs": model["kwargs"]}
        if model["resolution"] is not None:
            train_keys["image_size"] = model["resolution"]
        recipe = {"name": f"{spec.name}-arch-{t.number:04d}", "stages": [{"train": train_keys}, {"score": {}}]}
        path = recipes_dir / f"arch-{t.number:04d}.yaml"
        path.write_text(f"# architecture {t.number} of search {spec.name}: proxy accuracy {t.values[0]:.4f}\n"
                        + yaml.safe_dump(recipe, sort_keys=False))
        front_rows.append({"number": t.number, "proxy_accuracy": t.values[0], "full_accuracy": full_accuracy.get(t.number),
                           "metrics": t.user_attrs["metrics"], "model": model, "recipe": str(path)})
    x_metric = spec.objectives[1] if len(spec.objectives) > 1 else "macs"
    points = []
    for t in study.get_trials(deepcopy=False):
        metrics = t.user_attrs.get("metrics")
        if not metrics:
            continue
        ok = t.state.name == "COMPLETE" and "infeasible" not in t.user_attrs
        points.append({"x": metrics[x_metric], "accuracy": t.values[0] if ok else None,
                       "full_accuracy": full_accuracy.get(t.number), "label": f"#{t.number}"})
    notes = [f"{k} <= {v:.4g}" for k, v in limits.items() if k != x_metric]
    if spec.constraints.bits != 32:
        notes.append(f"scores and peak at {spec.constraints.bits} bits")
    files = {"trials": str(directory / "trials.csv"), "recipes": str(recipes_dir),
             "pareto": str(plot_pareto(points, directory / "pareto.png", x_label=x_metric, x_limit=limits.get(x_metric),
                                       notes=notes, title=f"search {spec.name} ({spec.strategy})"))}
    summary = {"name": spec.name, "strategy": spec.strategy, "objectives": spec.objectives, "limits": limits,
               "trials": len(rows), "proxy_trainings": trainings,
               "infeasible": sum(r["state"] == "infeasible" for r in rows), "front": front_rows,
               "rank_correlation": correlation}
    (directory / "search.json").write_text(json.dumps(summary, indent=2, default=str))
    files["summary"] = str(directory / "search.json")
    return SearchResult(directory, rows, front_rows, correlation, trainings, files)
