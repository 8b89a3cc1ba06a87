"""effdl.recipes: plans checked before anything runs, fan-out, resume by content hash, the report."""

import json
import textwrap

import pytest
import torch

from effdl.checkpoint import read_checkpoint_meta, save_model
from effdl.core.hooks import Callback
from effdl.errors import EffdlError, Interrupted
from effdl.models import create_model
from effdl.recipes import load_recipe, make_plan, recipe_from_text, run_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

SOURCE_CONFIG = {"dataset": "synthetic", "model": "tiny_cnn", "batch_size": 64, "weight_decay": 1e-3}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("src") / "model.safetensors"
    save_model(path, create_model("tiny_cnn"), config=SOURCE_CONFIG)
    return path


def recipe(text, tmp_path, **fields):
    body = textwrap.dedent(text)
    head = "".join(f"{k}: {v}\n" for k, v in {"name": "r", "out": str(tmp_path / "runs"), **fields}.items())
    path = tmp_path / "recipe.yaml"
    path.write_text(head + body)
    return load_recipe(path)


def refused(text, tmp_path, match, **fields):
    with pytest.raises(EffdlError, match=match) as info:
        make_plan(recipe(text, tmp_path, **fields))
    return str(info.value)


def test_bad_recipes_name_the_file_line_stage_and_key(tmp_path, source):
    stages = "stages:\n  - prune:\n      method: magnitude\n      sparsity: 0.5\n      epoch: 2\n"
    message = refused(stages, tmp_path, "unknown key 'epoch'; did you mean epochs", **{"from": source})
    # two header lines (name, out) + from, then stages, prune, method, sparsity, epoch -> line 8
    assert message.startswith(f"{tmp_path / 'recipe.yaml'}:8: stage 1 (prune)")
    assert "line" not in refused("stages:\n  - prnue: {}\n", tmp_path, "unknown stage kind 'prnue'; did you mean prune")
    refused("stages:\n  - train: {name: x}\n", tmp_path, r"'name' is set by the runner")
    refused("stages:\n  - quantize: {bits: 4}\n", tmp_path, "missing key 'method'", **{"from": source})
    # a value the config itself refuses, with the line of its key
    message = refused("stages:\n  - train:\n      epochs: 0\n", tmp_path, "epochs")
    assert ":5: stage 1 (train)" in message
    message = refused("stages:\n  - prune: {method: magnitude, sparsity: 1.5}\n", tmp_path, "sparsity",
                      **{"from": source})
    refused("stages: [\n", tmp_path, "not valid YAML")
    refused("stages: []\n", tmp_path, "non-empty list of stages")
    refused("stages:\n  - train: {}\nextra: 1\n", tmp_path, "unknown recipe key 'extra'")
    refused("stages:\n  - train: {}\nreport: {threads: 0}\n", tmp_path, "report: report threads")
    refused("stages:\n  - train: {}\n", tmp_path, "no checkpoint", **{"from": tmp_path / "missing.safetensors"})
    with pytest.raises(EffdlError, match="unknown recipe .* 'long-projcet'; did you mean long-project"):
        load_recipe("long-projcet")


def test_impossible_chains_are_refused_up_front(tmp_path, source):
    refused("stages:\n  - prune: {method: magnitude, sparsity: 0.5}\n", tmp_path, "prune needs a model")
    refused("stages:\n  - quantize: {method: ptq-int8}\n  - quantize: {method: qat}\n", tmp_path,
            r"stage 2 \(quantize\): cannot quantize a quantized model: stage 1 \(quantize\) is already quantized",
            **{"from": source})
    refused("stages:\n  - quantize: {method: qat, bits: 4}\n  - prune: {method: l1-filter, sparsity: 0.3}\n",
            tmp_path, r"cannot prune a quantized model .*qat 4-bit", **{"from": source})
    refused("stages:\n  - quantize: {method: binaryconnect}\n  - export: {int8: true}\n", tmp_path,
            "int8 ONNX graph cannot hold binaryconnect", **{"from": source})
    refused("stages:\n  - train: {epochs: 1}\n", tmp_path, "train builds a new model from scratch",
            **{"from": source})
    refused("stages:\n  - quantize: {method: sensitivity}\n", tmp_path, "writes a per-layer scan",
            **{"from": source})
    refused("stages:\n  - quantize: {method: ptq-int8, calibration_images: 32}\n", tmp_path,
            "at least 64 images", **{"from": source})


def test_factorize_then_quantize_runs_and_the_reverse_is_refused(tmp_path, source):
    refused("stages:\n  - quantize: {method: qat, bits: 4}\n  - factorize: {method: tucker, ratio: 0.5}\n", tmp_path,
            "cannot factorize a quantized model", **{"from": source})
    outcome = run_recipe(recipe("""
        stages:
          - factorize: {method: tucker, ratio: 0.5, round_to: 8, exclude: [features.0.0]}
          - quantize: {method: qat, bits: 8, act_bits: null}
        report: {latency: false}
    """, tmp_path, **{"from": source}))
    quantized = outcome.results["02-quantize"]
    factorized = outcome.results["01-factorize"]
    assert factorized["details"]["macs_after"] < factorized["details"]["macs_before"]
    assert all(r % 8 == 0 for layer in factorized["details"]["layers"].values() for r in layer["rank"])  # round_to
    assert quantized["details"]["layer_bits"]  # bits read back from the factorized, quantized layers
    lineage = read_checkpoint_meta(tmp_path / "runs" / "r" / "02-quantize" / "best.safetensors")["lineage"]
    assert [e["stage"] for e in lineage[-2:]] == ["factorize", "quantize"]


def test_a_quantized_from_checkpoint_is_known_to_the_plan(tmp_path, source):
    from effdl.compress.quantize import Int8StaticConfig, quantize_

    model = create_model("tiny_cnn")
    quantize_(model, Int8StaticConfig())
    path = tmp_path / "q.safetensors"
    save_model(path, model, config=SOURCE_CONFIG, extra_meta={"quantize": {"method": "ptq-int8"}})
    refused("stages:\n  - quantize: {method: qat}\n", tmp_path, "cannot quantize a quantized model: the checkpoint .* is already quantized",
            **{"from": path})


def test_fan_out_branches_on_every_combination_and_shares_the_stages_before(tmp_path, source):
    plan = make_plan(recipe("""
        stages:
          - prune: {method: magnitude, sparsity: [0.3, 0.5], include: ["conv*"]}
          - quantize: {method: qat, bits: [8, 4], act_bits: null, epochs: 1}
    """, tmp_path, **{"from": source}))
    assert len(plan.branches) == 4
    assert [b[-1].folder for b in plan.branches] == [
        "02-quantize+sparsity=0.3+bits=8", "02-quantize+sparsity=0.3+bits=4",
        "02-quantize+sparsity=0.5+bits=8", "02-quantize+sparsity=0.5+bits=4"]
    assert plan.branches[0][0] is plan.branches[1][0]  # one pruning run feeds both bit-widths
    assert len(plan.stages) == 6
    assert plan.branches[0][0].options.include == ["conv*"]  # a list for a list field is one value
    assert plan.branches[1][1].input is plan.branches[1][0]
    # hashes: the same config on different inputs differs; identical plans hash identically
    assert plan.branches[0][1].hash != plan.branches[2][1].hash
    again = make_plan(recipe("""
        stages:
          - prune: {method: magnitude, sparsity: [0.3, 0.5], include: ["conv*"]}
          - quantize: {method: qat, bits: [8, 4], act_bits: null, epochs: 1}
    """, tmp_path, **{"from": source}))
    assert [s.hash for s in again.stages] == [s.hash for s in plan.stages]
    # a list of lists fans out a list field
    nested = make_plan(recipe("stages:\n  - prune: {method: magnitude, sparsity: 0.3, include: [[a], [b]]}\n",
                              tmp_path, **{"from": source}))
    assert [b[0].options.include for b in nested.branches] == [["a"], ["b"]]


def test_a_recipe_runs_resumes_and_reruns_only_what_changed(tmp_path, source, monkeypatch):
    text = """
        stages:
          - prune: {method: magnitude, sparsity: [0.3, 0.6]}
          - quantize: {method: ptq-int8, calibration_images: 64}
        report: {latency: false}
    """
    outcome = run_recipe(recipe(text, tmp_path, **{"from": source}))
    root = tmp_path / "runs" / "r"
    assert not outcome.failed and len(outcome.results) == 4
    final = root / "02-quantize+sparsity=0.6" / "best.safetensors"
    lineage = read_checkpoint_meta(final)["lineage"]
    assert [e["stage"] for e in lineage[-2:]] == ["prune", "quantize"]
    assert lineage[-1]["source"] == str(root / "01-prune+sparsity=0.6" / "best.safetensors")
    state = json.loads((root / "01-prune+sparsity=0.6" / "stage.json").read_text())
    assert state["status"] == "done" and state["result"]["details"]["sparsity"] >= 0.59  # measured from the model
    rows = outcome.report["rows"]
    assert {r["name"] for r in rows} == {s.folder for s in outcome.plan.stages}
    assert any(r["pareto"] for r in rows)
    for name in ("runs.csv", "runs.json", "accuracy_vs_score.png", "stages.md"):
        assert (root / "report" / name).is_file()
    assert "02-quantize+sparsity=0.3" in (root / "report" / "stages.md").read_text()

    # The same recipe again: nothing runs.
    import effdl.pipelines.prune as prune_module
    import effdl.pipelines.quantize as quantize_module

    calls = []
    real_quantize = quantize_module.quantize_run
    monkeypatch.setattr(prune_module, "prune_checkpoint", lambda *a, **k: calls.append("prune"))
    monkeypatch.setattr(quantize_module, "quantize_run", lambda *a, **k: calls.append("quantize") or real_quantize(*a, **k))
    again = run_recipe(recipe(text, tmp_path, **{"from": source}), report=False)
    assert calls == [] and len(again.skipped) == 4
    # A changed quantize key reruns the quantize stages only, replacing their folders.
    changed = text.replace("calibration_images: 64", "calibration_images: 96")
    third = run_recipe(recipe(changed, tmp_path, **{"from": source}), report=False)
    assert calls == ["quantize", "quantize"] and len(third.skipped) == 2
    assert json.loads((root / "02-quantize+sparsity=0.3" / "stage.json").read_text())["options"][
        "calibration_images"] == 96
    # A branch dropped from the recipe: its folders are kept, and the plan names them
    from effdl.recipes.runner import describe_plan

    fewer = changed.replace("sparsity: [0.3, 0.6]", "sparsity: [0.3]")
    last = describe_plan(make_plan(recipe(fewer, tmp_path, **{"from": source})))[-1]
    assert last.startswith("not in this plan, kept as they are: 01-prune+sparsity=0.6, 02-quantize+sparsity=0.6")


def test_a_failing_branch_keeps_the_others_and_says_how_to_resume(tmp_path, source, monkeypatch):
    import effdl.pipelines.quantize as quantize_module

    real = quantize_module.quantize_run

    def fail_on_4_bits(source_, options, out_dir, **kw):
        if options.bits == 4:
            raise EffdlError("simulated failure")
        return real(source_, options, out_dir, **kw)

    monkeypatch.setattr(quantize_module, "quantize_run", fail_on_4_bits)
    text = "stages:\n  - quantize: {method: kmeans, bits: [4, 3]}\nreport: {latency: false}\n"
    with pytest.raises(EffdlError, match=r"stage 01-quantize\+bits=4 failed: simulated failure; the finished stages "
                                         r"are kept .*`effdl run .*recipe.yaml --from .* --out .*runs` resumes"):
        run_recipe(recipe(text, tmp_path, **{"from": source}))
    root = tmp_path / "runs" / "r"
    assert json.loads((root / "01-quantize+bits=4" / "stage.json").read_text())["status"] == "failed"
    assert json.loads((root / "01-quantize+bits=3" / "stage.json").read_text())["status"] == "done"
    monkeypatch.setattr(quantize_module, "quantize_run", real)
    resumed = run_recipe(recipe(text, tmp_path, **{"from": source}), report=False)
    assert resumed.skipped == ["01-quantize+bits=3"] and not resumed.failed


def test_an_interrupted_training_stage_resumes_inside_itself(tmp_path, monkeypatch):
    import effdl.train.run as run_module

    class StopInEpoch2(Callback):
        def on_after_step(self, trainer):
            if trainer.step == trainer.steps_per_epoch + 2:
                raise KeyboardInterrupt

    real_train = run_module.train
    monkeypatch.setattr(run_module, "train", lambda config, **kw: real_train(config, callbacks=[StopInEpoch2()], **kw))
    text = ("stages:\n  - train: {dataset: synthetic, model: tiny_cnn, epochs: 2, batch_size: 128, "
            "train_limit: 256, test_limit: 64, device: cpu}\nreport: {latency: false}\n")
    with pytest.raises(Interrupted, match="stopped during 01-train; the finished stages are kept"):
        run_recipe(recipe(text, tmp_path))
    stage_dir = tmp_path / "runs" / "r" / "01-train"
    assert (stage_dir / "last.safetensors").is_file()
    monkeypatch.setattr(run_module, "train", real_train)
    plan = make_plan(recipe(text, tmp_path))
    from effdl.recipes.runner import stage_status

    assert stage_status(plan, plan.stages[0]) == "resume"
    run_recipe(recipe(text, tmp_path))
    epochs = [json.loads(line)["epoch"] for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]  # the first epoch was not trained again
    assert json.loads((stage_dir / "stage.json").read_text())["status"] == "done"


def test_effdl_run_cli_dry_run_and_errors(tmp_path, source, capsys):
    from effdl.cli import main

    path = tmp_path / "r.yaml"
    path.write_text(f"name: cli\nout: {tmp_path}\nfrom: {source}\nstages:\n  - prune: {{method: magnitude, "
                    "sparsity: [0.2, 0.4]}\n")
    assert main(["run", str(path), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "2 branch(es)" in err and "01-prune+sparsity=0.4  [run]" in err
    assert not (tmp_path / "cli").exists()  # a dry run writes nothing
    path.write_text("stages:\n  - prune: {method: magnitude, sparsity: 0.2, epoch: 1}\n")
    assert main(["run", str(path), "--from", str(source)]) == 2
    assert "r.yaml:2: stage 1 (prune): unknown key 'epoch'" in capsys.readouterr().err
    assert main(["run", "--list"]) == 0
    assert "long-project" in capsys.readouterr().out


def test_every_shipped_recipe_plans(source):
    from effdl.recipes import shipped_recipes

    shipped = shipped_recipes()
    assert {"long-project", "micronet", "cpu-deployment", "demo"} <= set(shipped)
    for name, path in shipped.items():
        parsed = recipe_from_text(path.read_text(), path=path)
        if parsed.stages[0].kind != "train":  # a recipe for your own checkpoint: `effdl run NAME --from CKPT`
            parsed.source = str(source)
        plan = make_plan(parsed)
        assert plan.branches, name


def test_the_resume_hint_of_a_shipped_recipe_names_it_and_its_checkpoint(source):
    from effdl.recipes import shipped_recipes
    from effdl.recipes.runner import _resume_hint

    shipped = load_recipe(shipped_recipes()["cpu-deployment"])
    shipped.source = str(source)  # what `effdl run cpu-deployment --from CKPT` sets
    assert _resume_hint(make_plan(shipped)).startswith(f"`effdl run cpu-deployment --from {source}` resumes")


def test_values_names_and_keys_are_checked_before_anything_runs(tmp_path, source):
    fields = {"from": source}
    refused("stages:\n  - prune:\n      method: magnitude\n      sparsity: 0.5\n      epochs: 1.5\n", tmp_path,
            r":8: stage 1 \(prune\): epochs: input should be a valid integer", **fields)
    refused("stages:\n  - bench: {batch_sizes: 1}\n", tmp_path, "batch_sizes: input should be a valid list", **fields)
    refused("stages:\n  - export: {int8: yes please}\n", tmp_path, "int8: input should be a valid boolean", **fields)
    refused("stages:\n  - quantize: {method: qat, bits: 9}\n", tmp_path, r"stage 1 \(quantize\): .*from 1 to 8", **fields)
    refused("stages:\n  - train: {model: resnet21}\n", tmp_path, "unknown model 'resnet21'; did you mean .*resnet20")
    refused("stages:\n  - train: {dataset: cifar11}\n", tmp_path, "unknown dataset 'cifar11'")
    refused("stages:\n  - train: {model: resnet20, model_kwargs: {widht: 0.5}}\n", tmp_path, "has no option widht")
    refused("stages:\n  - distill: {method: nosuch}\n", tmp_path, r"stage 1 \(distill\): .*nosuch", **fields)
    refused("stages:\n  - score: {scorer: nosuch}\n", tmp_path, "unknown scorer 'nosuch'", **fields)
    refused("stages:\n  - score: {}\nreport: {scorers: [imt2042]}\n", tmp_path, "unknown report scorer 'imt2042'",
            **fields)
    refused("stages:\n  - prune:\n      method: magnitude\n      sparsity: 0.5\n      sparsity: 0.6\n", tmp_path,
            r":8: 'sparsity' is given twice \(first on line 7\)", **fields)
    refused("stages:\n  - prune: {method: magnitude, sparsity: [0.5, 0.50]}\n", tmp_path, "two branches give the same config",
            **fields)
    refused("stages:\n  - prune: {method: block, blocks: 2, round_to: 8}\n", tmp_path,
            r"stage 1 \(prune\): .*--round-to are for channel pruning", **fields)
    refused("stages:\n  - prune: {method: block, target_macs: [0.9, 1.2]}\n", tmp_path,
            r"stage 1 \(prune\): .*fraction of the MACs to keep, in \(0, 1\); got 1.2", **fields)
    refused("stages:\n  - prune: {method: l1-filter, sparsity: 0.3, target_macs: 0.5}\n", tmp_path,
            "give one", **fields)
    refused("stages:\n  - prune: {method: magnitude, sparsity: 0.5}\n", tmp_path, "did you mean .*best.safetensors",
            **{"from": _run_folder(tmp_path, source)})


def _run_folder(tmp_path, source):
    folder = tmp_path / "a-run"
    folder.mkdir(exist_ok=True)
    (folder / "best.safetensors").write_bytes(source.read_bytes())
    return folder


def test_a_shared_key_a_branch_does_not_read_is_left_out_of_that_branch_only(tmp_path, source):
    from effdl.recipes.runner import describe_plan

    plan = make_plan(recipe("""
        stages:
          - prune: {method: l1-filter, sparsity: 0.5, epochs: [0, 2], lr: 0.02}
          - quantize: {method: [ptq-int8, qat], act_bits: 4, epochs: 1}
    """, tmp_path, **{"from": source}))
    prune_0, prune_2 = plan.branches[0][0], plan.branches[2][0]
    assert prune_0.left_out == ("lr",) and "lr" not in prune_0.values and prune_0.options.lr != 0.02
    assert prune_2.left_out == () and prune_2.options.lr == 0.02
    ptq, qat = plan.branches[0][1], plan.branches[1][1]
    assert ptq.left_out == ("act_bits", "epochs") and (ptq.options.act_bits, ptq.options.epochs) == ("same", 0)
    assert (qat.options.act_bits, qat.options.epochs) == (4, 1)
    assert "left out, not read here: act_bits, epochs" in "\n".join(describe_plan(plan))
    # training keys follow the same rule: momentum is SGD's
    train = make_plan(recipe("stages:\n  - train: {model: tiny_cnn, dataset: synthetic, optimizer: [sgd, adamw], "
                             "momentum: 0.95}\n", tmp_path))
    assert [(b[0].options.optimizer, b[0].left_out) for b in train.branches] == [("sgd", ()), ("adamw", ("momentum",))]
    assert train.branches[0][0].options.momentum == 0.95
    refused("stages:\n  - train: {model: tiny_cnn, dataset: synthetic, optimizer: adamw, lr: [0.1, 0.2], "
            "momentum: 0.95}\n", tmp_path, "momentum is read only with optimizer sgd")
    # the other kinds of "this method has no such setting" follow it too
    bits = make_plan(recipe("stages:\n  - quantize: {method: [ptq-int8, qat], bits: 4, epochs: 1}\n", tmp_path,
                            **{"from": source}))
    assert [b[0].left_out for b in bits.branches] == [("bits", "epochs"), ()]
    blocks = make_plan(recipe("stages:\n  - prune: {method: [l1-filter, block], sparsity: 0.3, blocks: 1}\n", tmp_path,
                              **{"from": source}))
    assert [b[0].left_out for b in blocks.branches] == [("blocks",), ("sparsity",)]
    distill = make_plan(recipe("stages:\n  - distill: {model: tiny_cnn, dataset: synthetic, method: [kd, dkd], beta: 4}\n",
                               tmp_path, **{"from": source}))
    assert [(b[0].left_out, b[0].options.beta) for b in distill.branches] == [(("beta",), None), ((), 4.0)]
    # a key no branch reads changes nothing anywhere: refused, as without a fan-out
    refused("stages:\n  - quantize: {method: [ptq-int8, int8-weight], act_bits: 4}\n", tmp_path,
            "--act-bits .act_bits. is an option of --method qat; --method ptq-int8 does not use it; no branch of the "
            "stage reads act_bits", **{"from": source})
    # an error in one branch names it
    refused("stages:\n  - quantize: {method: [ptq-int8, qat], epochs: [0, 1]}\n", tmp_path,
            r"--epochs fine-tunes training methods .* \(in the branch method='ptq-int8', epochs=1\)", **{"from": source})
    # the fan-out's own key is the user's choice for that branch: refused where unread
    refused("stages:\n  - quantize: {method: ptq-int8, act_bits: [4, 8]}\n", tmp_path, "does not use it",
            **{"from": source})


def test_alternatives_give_each_branch_keys_of_its_own(tmp_path, source):
    plan = make_plan(recipe("""
        stages:
          - quantize:
              - {method: ptq-int8, calibration_images: 64}
              - {method: qat, bits: [8, 4], act_bits: 4, epochs: 1, calibration_images: 64}
          - export: {}
    """, tmp_path, **{"from": source}))
    # the folders name the keys the alternatives differ in, then the alternative's own fan-out
    assert [b[0].folder for b in plan.branches] == [
        "01-quantize+method=ptq-int8", "01-quantize+method=qat+act_bits=4+epochs=1+bits=8",
        "01-quantize+method=qat+act_bits=4+epochs=1+bits=4"]
    assert [(b[0].options.method, b[0].options.bits, b[0].options.act_bits) for b in plan.branches] == [
        ("ptq-int8", None, "same"), ("qat", 8, 4), ("qat", 4, 4)]
    assert all(b[0].options.calibration_images == 64 for b in plan.branches)  # shared keys are no choice
    assert len({b[1].folder for b in plan.branches}) == 3  # each export follows its own branch
    # an alternative's keys are its own: one it does not read is refused, at its line
    message = refused("stages:\n  - quantize:\n      - {method: qat, epochs: 1}\n      - {method: ptq-int8, epochs: 1}\n",
                      tmp_path, "--epochs fine-tunes training methods", **{"from": source})
    assert ":7: stage 1 (quantize)" in message
    message = refused("stages:\n  - quantize:\n      - {method: ptq-int8}\n      - {method: qat, epoch: 1}\n",
                      tmp_path, "unknown key 'epoch'", **{"from": source})
    assert ":7: stage 1 (quantize)" in message
    refused("stages:\n  - quantize: [{method: qat}, {method: qat, epochs: 0}]\n", tmp_path,
            r"two branches give the same config \(alternative 1 and alternative 2 \(epochs=0\)\)", **{"from": source})
    refused("stages:\n  - quantize: [{method: qat}, 4]\n", tmp_path, "one mapping of keys per branch",
            **{"from": source})
    refused("stages:\n  - quantize: []\n", tmp_path, "one mapping of keys per branch", **{"from": source})


def test_a_measuring_fan_out_does_not_repeat_what_follows_and_presentation_keys_keep_the_hash(tmp_path, source):
    plan = make_plan(recipe("""
        stages:
          - export: {int8: [false, true]}
          - prune: {method: magnitude, sparsity: 0.5}
    """, tmp_path, **{"from": source}))
    assert sorted(s.folder for s in plan.stages) == ["01-export+int8=false", "01-export+int8=true", "02-prune"]
    assert plan.branches[0][1] is plan.branches[1][1]
    text = "stages:\n  - train: {dataset: synthetic, model: tiny_cnn, epochs: 1%s}\n"
    quiet = make_plan(recipe(text % ", progress: false", tmp_path)).stages[0].hash
    assert quiet == make_plan(recipe(text % "", tmp_path)).stages[0].hash
    assert quiet != make_plan(recipe(text % ", lr: 0.2", tmp_path)).stages[0].hash
    long = make_plan(recipe("stages:\n  - prune: {method: magnitude, sparsity: 0.5, include: [[%s]]}\n"
                            % ", ".join(f"layer{i}.conv" for i in range(40)), tmp_path, **{"from": source}))
    assert len(long.stages[0].folder) < 40


def test_a_rebuilt_input_reruns_what_follows_and_foreign_folders_are_never_deleted(tmp_path, source):
    from effdl.recipes.runner import describe_plan

    text = ("stages:\n  - prune: {method: magnitude, sparsity: 0.4}\n  - quantize: {method: ptq-int8, "
            "calibration_images: 64}\nreport: {latency: false}\n")
    run_recipe(recipe(text, tmp_path, **{"from": source}), report=False)
    root = tmp_path / "runs" / "r"
    (root / "01-prune" / "stage.json").unlink()  # the pruned checkpoint will be made again
    lines = describe_plan(make_plan(recipe(text, tmp_path, **{"from": source})))
    assert any("01-prune  [rerun]" in line for line in lines) and any("02-quantize  [rerun]" in line for line in lines)
    with pytest.raises(EffdlError, match="did not write .*nothing was deleted"):
        run_recipe(recipe(text, tmp_path, **{"from": source}), report=False)
    assert (root / "01-prune" / "best.safetensors").is_file()


def test_factorize_and_prune_refuse_a_quantized_checkpoint_as_commands_too(tmp_path, source, capsys):
    from effdl.cli import main
    from effdl.compress.quantize import Int8StaticConfig, quantize_

    model = create_model("tiny_cnn")
    quantize_(model, Int8StaticConfig())
    path = tmp_path / "q.safetensors"
    save_model(path, model, config=SOURCE_CONFIG)
    for command in (["factorize", str(path), "--method", "tucker", "--ratio", "0.5"],
                    ["prune", str(path), "--method", "magnitude", "--sparsity", "0.5"]):
        assert main([*command, "--out", str(tmp_path / command[0])]) == 2
        assert "quantized" in capsys.readouterr().err
        assert not (tmp_path / command[0]).exists()
    recipe("stages:\n  - prune: {method: magnitude, sparsity: 0.5}\n", tmp_path, **{"from": source})
    assert main(["run", str(tmp_path / "recipe.yaml"), "--name", "../escape"]) == 2
    assert "must be a folder name" in capsys.readouterr().err


def test_a_finished_stage_survives_an_upgrade_and_a_change_keeps_its_old_run_aside(tmp_path, source, capsys):
    """A stage recorded by an older effdl (another hash, a key it did not have yet) is still done;
    a real change says which key changed and keeps the finished run beside the new one."""
    text = "stages:\n  - prune: {method: magnitude, sparsity: 0.3}\nreport: {latency: false}\n"
    run_recipe(recipe(text, tmp_path, **{"from": source}), report=False)
    folder = tmp_path / "runs" / "r" / "01-prune"
    state = json.loads((folder / "stage.json").read_text())
    assert "epochs" in state["options"]
    del state["options"]["epochs"]  # a key added since, left at its default
    state["hash"] = "from-an-older-effdl"
    (folder / "stage.json").write_text(json.dumps(state))
    again = run_recipe(recipe(text, tmp_path, **{"from": source}), report=False)
    assert again.skipped == ["01-prune"]

    capsys.readouterr()
    run_recipe(recipe(text.replace("0.3", "0.5"), tmp_path, **{"from": source}), report=False)
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "its config changed (sparsity 0.3 -> 0.5)" in out
    aside = folder.with_name("01-prune.replaced-from-an-older-effdl")
    assert (aside / "best.safetensors").is_file() and f"kept in {aside}" in out
    assert json.loads((folder / "stage.json").read_text())["options"]["sparsity"] == 0.5
    # a failed or interrupted stage is not worth keeping: replaced in place, nothing set aside
    state = json.loads((folder / "stage.json").read_text())
    (folder / "stage.json").write_text(json.dumps({**state, "status": "failed"}))
    run_recipe(recipe(text.replace("0.3", "0.5"), tmp_path, **{"from": source}), report=False)
    assert [p.name for p in folder.parent.iterdir() if ".replaced-" in p.name] == [aside.name]
    assert json.loads((folder / "stage.json").read_text())["status"] == "done"


class _StopInEpoch2(Callback):
    def on_after_step(self, trainer):
        if trainer.step == trainer.steps_per_epoch + 1:
            raise KeyboardInterrupt


def _stop_fine_tunes(monkeypatch):
    """Make every compression fine-tune stop (Ctrl-C) one step into its second epoch."""
    from effdl.pipelines.finetune import FineTuner

    real = FineTuner.__init__

    def stopping(self, *args, callbacks=None, **kwargs):
        real(self, *args, callbacks=[*(callbacks or []), _StopInEpoch2()], **kwargs)

    monkeypatch.setattr(FineTuner, "__init__", stopping)
    return lambda: monkeypatch.setattr(FineTuner, "__init__", real)


def test_an_interrupted_compression_fine_tune_resumes_exactly(tmp_path, source, monkeypatch):
    """`prune --resume`: the same pruning again, then the fine-tune from last.safetensors; the
    result is the uninterrupted run's, bit for bit, and each epoch is logged once."""
    from effdl.checkpoint import read_checkpoint
    from effdl.pipelines.prune import PruneOptions, prune_checkpoint
    from effdl.recipes.stages import run_single_stage

    options = PruneOptions(method="l1-filter", sparsity=0.5, epochs=2, lr=0.05, device="cpu", distill=0.5)
    whole = prune_checkpoint(source, options, tmp_path / "whole")
    restore = _stop_fine_tunes(monkeypatch)
    with pytest.raises(Interrupted, match="--resume --out"):
        prune_checkpoint(source, options, tmp_path / "cut")
    restore()
    with pytest.raises(EffdlError, match=r"started otherwise \(lr 0.05 -> 0.1\)"):
        run_single_stage("prune", PruneOptions(**{**options.__dict__, "lr": 0.1}), tmp_path / "cut",
                         source=source, resume=True)
    resumed = run_single_stage("prune", options, tmp_path / "cut", source=source, resume=True)
    assert resumed["accuracy"] == whole["accuracy"]
    a, _ = read_checkpoint(tmp_path / "whole" / "best.safetensors")
    b, _ = read_checkpoint(tmp_path / "cut" / "best.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    with pytest.raises(EffdlError, match="finished run"):
        run_single_stage("prune", options, tmp_path / "cut", source=source, resume=True)
    with pytest.raises(EffdlError, match="several phases"):
        prune_checkpoint(source, PruneOptions(method="magnitude", sparsity=0.5, epochs=1, rounds=2), tmp_path / "x",
                         resume=True)


def test_a_recipe_resumes_an_interrupted_quantize_fine_tune(tmp_path, source, monkeypatch):
    from effdl.recipes.runner import stage_status

    text = ("stages:\n  - quantize: {method: qat, bits: 4, epochs: 2, device: cpu, calibration_images: 64}\n"
            "report: {latency: false}\n")
    restore = _stop_fine_tunes(monkeypatch)
    with pytest.raises(Interrupted, match="stopped during 01-quantize"):
        run_recipe(recipe(text, tmp_path, **{"from": source}))
    restore()
    plan = make_plan(recipe(text, tmp_path, **{"from": source}))
    assert stage_status(plan, plan.stages[0]) == "resume"
    run_recipe(recipe(text, tmp_path, **{"from": source}), report=False)
    folder = tmp_path / "runs" / "r" / "01-quantize"
    epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    assert json.loads((folder / "stage.json").read_text())["status"] == "done"


def test_a_quantize_run_with_feature_distillation_repeats_bit_for_bit(tmp_path, source):
    """The connectors FitNets adds are initialised from the run's seed, not from whatever ran before."""
    from effdl.checkpoint import read_checkpoint
    from effdl.pipelines.quantize import QuantizeOptions, quantize_run

    options = QuantizeOptions(method="qat", bits=4, epochs=1, device="cpu", calibration_images=64, distill=0.5,
                              distill_method="fitnets")
    quantize_run(source, options, tmp_path / "a")
    torch.rand(1000)  # other work moves the global random stream
    quantize_run(source, options, tmp_path / "b")
    a, _ = read_checkpoint(tmp_path / "a" / "best.safetensors")
    b, _ = read_checkpoint(tmp_path / "b" / "best.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_checks_the_source_by_its_bytes_and_names_what_differs(tmp_path, source, monkeypatch, capsys):
    """A resume from a checkpoint rewritten since is refused; the same bytes under another path are
    the same source; `effdl train --resume` on a compression run names the command that resumes it;
    a multi-phase method's interruption does not promise a resume."""
    import shutil

    from effdl.cli import main
    from effdl.pipelines.prune import PruneOptions, prune_checkpoint
    from effdl.recipes.stages import run_single_stage

    copy = tmp_path / "copy.safetensors"
    shutil.copy(source, copy)
    options = PruneOptions(method="l1-filter", sparsity=0.5, epochs=2, device="cpu")
    restore = _stop_fine_tunes(monkeypatch)
    with pytest.raises(Interrupted):
        prune_checkpoint(copy, options, tmp_path / "cut")
    with pytest.raises(Interrupted, match="several phases, which cannot resume: start it again with --overwrite"):
        prune_checkpoint(copy, PruneOptions(method="magnitude", sparsity=0.5, epochs=2, rounds=2),
                         tmp_path / "rounds")
    restore()
    assert main(["train", "--resume", str(tmp_path / "cut")]) == 2
    assert "resume it with `effdl prune" in capsys.readouterr().err
    with pytest.raises(EffdlError, match=r"lr 0.01 -> 0.2"):
        run_single_stage("prune", PruneOptions(**{**options.__dict__, "lr": 0.2}), tmp_path / "cut", source=copy,
                         resume=True)
    with pytest.raises(EffdlError, match="already holds a run .*continue it with --resume"):
        prune_checkpoint(copy, options, tmp_path / "cut")
    torch.manual_seed(5)
    save_model(tmp_path / "retrained.safetensors", create_model("tiny_cnn"), config=SOURCE_CONFIG)
    with pytest.raises(EffdlError, match="another source checkpoint"):
        prune_checkpoint(tmp_path / "retrained.safetensors", options, tmp_path / "cut", resume=True)
    assert prune_checkpoint(source, options, tmp_path / "cut", resume=True)["accuracy"] >= 0  # same bytes


def test_a_batch_the_data_cannot_take_is_refused_before_any_work_and_leaves_nothing(tmp_path, source):
    from effdl.pipelines.quantize import QuantizeOptions, quantize_run

    with pytest.raises(EffdlError, match="batch size 4096 is larger than the"):
        quantize_run(source, QuantizeOptions(method="qat", epochs=1, batch_size=4096, device="cpu"), tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_odd_folders_and_state_files_are_refused_in_one_line_and_left_untouched(tmp_path, source):
    text = "stages:\n  - prune: {method: magnitude, sparsity: 0.4}\nreport: {latency: false}\n"
    folder = tmp_path / "runs" / "r" / "01-prune"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    for _ in range(2):  # refused every time, and nothing is written into the user's folder
        with pytest.raises(EffdlError, match="did not write"):
            run_recipe(recipe(text, tmp_path, **{"from": source}), report=False)
        assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    (folder / "stage.json").write_text("[1, 2]")  # not a record the runner wrote
    from effdl.recipes.runner import describe_plan

    lines = describe_plan(make_plan(recipe(text, tmp_path, **{"from": source})))
    assert any("its stage.json is unreadable" in line for line in lines)
    with pytest.raises(EffdlError, match="no readable stage.json"):
        run_recipe(recipe(text, tmp_path, **{"from": source}), report=False)
    assert (folder / "notes.txt").read_text() == "mine"


def test_a_boolean_for_a_number_and_a_device_this_machine_lacks_are_refused_while_planning(tmp_path, source):
    refused("stages:\n  - prune: {method: magnitude, sparsity: 0.5, epochs: true}\n", tmp_path,
            "epochs: True is a boolean", **{"from": source})
    refused("stages:\n  - train: {dataset: synthetic, model: tiny_cnn, epochs: yes}\n", tmp_path,
            "epochs: True is a boolean")
    refused("stages:\n  - distill: {student: resnet20, epochs: 1}\n", tmp_path, "unknown key 'student'; did you mean model",
            **{"from": source})
    refused("stages:\n  - prune: {method: magnitude, sparsity: 0.5, device: gpu9}\n", tmp_path,
            "unknown device 'gpu9'", **{"from": source})
    make_plan(recipe("stages:\n  - quantize: {method: qat, epochs: 1, quantize_outputs: false}\n", tmp_path,
                     **{"from": source}))  # a boolean where one is due


def test_the_report_marks_an_accuracy_measured_on_a_test_subset(tmp_path, source):
    # A subset's figure next to full-split ones must say so (it is not comparable), as `effdl report` does.
    outcome = run_recipe(recipe("""
        stages:
          - prune: {method: magnitude, sparsity: 0.3, test_limit: [null, 40]}
        report: {latency: false}
    """, tmp_path, **{"from": source}))
    stages = (tmp_path / "runs" / "r" / "report" / "stages.md").read_text()
    cells = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in stages.splitlines()
             if line.startswith("| 01-prune")}
    assert cells["01-prune+test_limit=40"].endswith("(test (balanced subset of 40))")
    assert cells["01-prune+test_limit=null"].endswith("%")
    assert "## branch 1 (test_limit=null)" in stages  # as the recipe and the folder write it, not Python's None
    assert not outcome.failed


def test_a_distill_stage_with_its_own_teacher_records_that_teacher_as_its_input(tmp_path, source):
    teacher = save_model(tmp_path / "teacher.safetensors", create_model("tiny_cnn"), config=SOURCE_CONFIG)
    plan = make_plan(recipe(f"stages:\n  - distill: {{teacher: {teacher}, epochs: 1}}\n  - distill: {{epochs: 1}}\n",
                            tmp_path, **{"from": source}))
    first, second = plan.branches[0]
    assert plan.input_checkpoint(first) == teacher  # not the recipe's from:, which it never reads
    assert plan.input_checkpoint(second) == plan.directory(first) / "best.safetensors"
