"""Data-parallel training under torchrun's conventions, on CPU with gloo: 2 real processes.

One spawned pair of processes runs every distributed scenario once (module fixture `ddp_results`,
about 20 s on 2 cores) and writes what each rank saw; the tests below read it. The CLI test starts
`torchrun -m effdl train` itself, as a user would.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from effdl.core.hooks import Callback
from effdl.data import BatchLoader
from effdl.data.datasets import synthetic_dataset
from effdl.data.loader import shard_positions
from effdl.errors import EffdlError
from effdl.train import distributed

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(out_dir: Path, **changes):
    from effdl.train import TrainConfig

    values = dict(dataset="synthetic", model="resnet20", model_kwargs={"width": 0.25}, epochs=2, batch_size=64,
                  eval_batch_size=100, lr=0.05, device="cpu", progress=False, channels_last=False, bf16=False,
                  out_dir=str(out_dir), threads=1)
    values.update(changes)
    return TrainConfig(**values)


class _StopAt(Callback):
    """Ctrl-C on every process after optimizer step `step` (as torchrun forwards it)."""

    def __init__(self, step: int):
        self.step = step

    def on_after_step(self, trainer) -> None:
        if trainer.step == self.step:
            raise KeyboardInterrupt


class _DieAt(Callback):
    """Rank 1 dies (as if killed) after optimizer step `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_after_step(self, trainer) -> None:
        if trainer.step == self.step and distributed.rank() == 1:
            os._exit(3)


def _checksum(model: nn.Module) -> list[float]:
    return distributed.parameter_checksums(model).tolist()


def _worker(rank: int, port: int, root: str) -> None:
    """Every scenario, on one rank; each rank works in its own folder (relative run paths), so
    anything a non-zero rank writes shows up there."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    here = Path(root) / f"rank{rank}"
    here.mkdir(parents=True, exist_ok=True)
    os.chdir(here)
    from effdl.checkpoint import load_model, read_checkpoint, split_namespace
    from effdl.compress.prune.schedules import AGPCallback
    from effdl.compress.quantize import FakeQuantConfig, quantize_
    from effdl.measure.accuracy import evaluate
    from effdl.models import create_model
    from effdl.train import Trainer
    from effdl.train.run import resume, train

    out: dict = {"rank": rank}
    data = synthetic_dataset(n_train=256, n_test=200, num_classes=4, size=16)
    distributed.init_from_env("cpu")

    # 1. A short run: sharded evaluation vs one process on the same weights; who wrote what.
    result = train(_config(Path("runs"), name="plain", epochs=1), data=data)
    out["plain"] = {"correct": result.correct, "total": result.total}
    if rank == 0:
        model, _ = load_model("runs/plain/best.safetensors")
        loader = BatchLoader.for_split(data, "test", batch_size=37)  # the whole split, other batches
        single = evaluate(model, loader)
        out["plain"]["single_correct"], out["plain"]["single_total"] = single.correct, single.total

    # 2. An indivisible global batch: the same clear error on every process, nothing written.
    try:
        train(_config(Path("runs"), name="odd", batch_size=63), data=data)
    except EffdlError as exc:
        out["odd_batch"] = f"{type(exc).__name__}: {exc}"

    # 3. AGP pruning and LSQ quantizers (initialised lazily on each shard's first batch) under DDP.
    torch.manual_seed(0)
    student = create_model("resnet20", num_classes=4, width=0.25)
    quantize_(student, FakeQuantConfig(weight_bits=4, act_bits=4, method="lsq"))
    agp = AGPCallback(0.5, end_step=4, every=1)
    trainer = Trainer(student, data, _config(Path("runs"), epochs=1), callbacks=[agp])
    trainer.fit()
    out["wrapped"] = type(trainer.train_module).__name__
    out["masks"] = {name: mask.flatten().nonzero().flatten().tolist() for name, mask in agp.masks.items()}
    out["steps"] = [v for n, p in trainer.model.named_parameters() if n.endswith(".step")
                    for v in p.detach().flatten().tolist()]
    out["weights"] = _checksum(trainer.model)

    # 4. Resume exactly: a run stopped mid-epoch by Ctrl-C, then resumed, equals an unstopped one.
    straight = _config(Path("runs"), name="straight", dataset="synthetic", epochs=2, augment={"cutout": 4})
    train(straight)
    try:
        train(straight.model_copy(update={"name": "stopped"}), callbacks=[_StopAt(9)])
    except KeyboardInterrupt:
        out["stopped"] = True
    resume("runs/stopped")
    if rank == 0:
        a, _ = read_checkpoint("runs/straight/last.safetensors")
        b, _ = read_checkpoint("runs/stopped/last.safetensors")
        wa, wb = split_namespace(a, "model"), split_namespace(b, "model")
        out["resume_max_diff"] = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)
        out["resume_metrics"] = [len(Path(f"runs/{n}/metrics.jsonl").read_text().splitlines())
                                 for n in ("straight", "stopped")]
    out["files"] = sorted(str(p) for p in Path(".").rglob("*") if p.is_file())

    Path(root, f"result{rank}.json").write_text(json.dumps(out))  # rank 1 never gets further

    # 5. Rank 1 dies mid-epoch: rank 0 stops with one clear error and leaves a resumable state.
    try:
        train(_config(Path("runs"), name="dying", epochs=2), data=data, callbacks=[_DieAt(6)])
    except EffdlError as exc:
        out["dying"] = f"{type(exc).__name__}: {exc}"
        out["dying_step"] = read_checkpoint("runs/dying/last.safetensors")[1]["train_state"]["step"]
    Path(root, f"result{rank}.json").write_text(json.dumps(out))


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> list[dict]:
    root = tmp_path_factory.mktemp("ddp")
    context = torch.multiprocessing.get_context("spawn")
    port = _free_port()
    processes = [context.Process(target=_worker, args=(r, port, str(root))) for r in range(WORLD)]
    for process in processes:
        process.start()
    for process in processes:  # rank 1 exits with 3 on purpose (scenario 5)
        process.join(timeout=240)
        if process.is_alive():
            process.kill()
    assert [p.exitcode for p in processes] == [0, 3]
    return [json.loads((root / f"result{r}.json").read_text()) for r in range(WORLD)]


def test_sharded_evaluation_counts_exactly_what_one_process_counts(ddp_results):
    plain = ddp_results[0]["plain"]
    assert plain["total"] == plain["single_total"] == 200
    assert plain["correct"] == plain["single_correct"]
    assert ddp_results[1]["plain"]["correct"] == plain["correct"]  # every process returns the same result


def test_only_rank_zero_writes(ddp_results):
    assert ddp_results[1]["files"] == []
    files = ddp_results[0]["files"]
    for name in ("config.yaml", "metrics.jsonl", "best.safetensors", "last.safetensors", "summary.json"):
        assert f"runs/plain/{name}" in files
    assert not any(f.startswith("runs/odd") for f in files)  # refused before anything was written


def test_indivisible_batch_is_one_clear_error_on_every_process(ddp_results):
    for result in ddp_results:
        assert result["odd_batch"].startswith("AgreedError: batch size 63 is not divisible by the 2")


def test_pruning_masks_and_learned_step_sizes_are_identical_across_ranks(ddp_results):
    r0, r1 = ddp_results
    assert r0["wrapped"] == "DistributedDataParallel"
    assert r0["masks"] and r0["masks"] == r1["masks"]
    kept = sum(len(v) for v in r0["masks"].values())
    assert 0 < kept  # AGP reached its final sparsity on real masks
    assert len(r0["steps"]) > 10 and r0["steps"] == r1["steps"]
    assert len(set(r0["steps"])) > 1  # learned per quantizer, not left at their initial value
    assert r0["weights"] == r1["weights"]


def test_a_dead_process_stops_the_run_with_a_resumable_state(ddp_results):
    r0 = ddp_results[0]
    assert r0["dying"].startswith("PeerFailure: another training process stopped during epoch 2")
    assert "resume with `effdl train --resume runs/dying`" in r0["dying"]
    assert r0["dying_step"] == 6  # the last step every process finished (4 steps per epoch)


def test_resumed_distributed_run_continues_exactly(ddp_results):
    r0 = ddp_results[0]
    assert r0["stopped"] and ddp_results[1]["stopped"]
    assert r0["resume_max_diff"] == 0.0
    assert r0["resume_metrics"] == [2, 2]  # each epoch logged once


# -- pieces without a process group ---------------------------------------------------------------------
def test_shards_are_disjoint_equal_and_cover_evaluation():
    train_shards = [shard_positions(103, r, 3, train=True, seed=1) for r in range(3)]
    assert [len(s) for s in train_shards] == [34, 34, 34]
    assert len(set(torch.cat(train_shards).tolist())) == 102
    eval_shards = [shard_positions(103, r, 3, train=False) for r in range(3)]
    assert sorted(torch.cat(eval_shards).tolist()) == list(range(103))


def test_per_process_batch_and_bad_launch_variables(monkeypatch):
    assert distributed.per_process_batch(128, 4) == 32
    with pytest.raises(EffdlError, match="not divisible by the 3"):
        distributed.per_process_batch(128, 3)
    for name in distributed.RENDEZVOUS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert distributed.init_from_env("cpu") is None  # not under torchrun: one process, no group
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(EffdlError, match="LOCAL_RANK, MASTER_ADDR, MASTER_PORT is not set"):
        distributed.init_from_env("cpu")
    with pytest.raises(EffdlError, match="mixed devices \\(rank 0: cuda, rank 1: cpu\\)"):
        distributed.check_same_device_kinds(["cuda", "cpu"])
    with pytest.raises(EffdlError):  # one GPU named for every process (or no CUDA at all here)
        distributed.process_device("cuda:0", 0)


def test_sync_batchnorm_conversion_is_undone_on_the_same_tensors():
    from effdl.models import create_model

    model = create_model("resnet20", width=0.25)
    weight = model.bn1.weight
    originals = distributed.convert_sync_batchnorm(model)
    assert originals and all(isinstance(model.get_submodule(n), nn.SyncBatchNorm) for n in originals)
    assert model.bn1.weight is weight
    distributed.revert_sync_batchnorm(model, originals)
    assert type(model.bn1) is nn.BatchNorm2d and model.bn1.weight is weight
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


def test_torchrun_cli_reports_one_line(tmp_path):
    """`torchrun -m effdl train` with a batch 2 processes cannot split: one error line, rank 0's."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "effdl", "train",
         "--data", "synthetic", "--model", "resnet20", "--batch-size", "63", "--device", "cpu",
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "effdl: error" in line]
    assert errors == ["effdl: error: batch size 63 is not divisible by the 2 training processes: "
                      "give a multiple of 2 (the batch size is the global one, split evenly)"]
    assert not (tmp_path / "run").exists()


def test_torchrun_runs_a_compression_recipe_as_one_job(tmp_path):
    """`torchrun -m effdl run`: prune and QAT fine-tune data-parallel, rank 0 alone writes, measuring
    stages run once; the recorded accuracy is what one process measures on the saved weights."""
    from effdl.checkpoint import load_model, save_model
    from effdl.data import load_dataset_for
    from effdl.measure import evaluate
    from effdl.models import create_model

    torch.manual_seed(0)
    source = tmp_path / "source.safetensors"
    save_model(source, create_model("tiny_cnn"),
               config={"dataset": "synthetic", "model": "tiny_cnn", "batch_size": 64, "device": "cpu"})
    (tmp_path / "recipe.yaml").write_text(
        f"name: r\nout: {tmp_path / 'runs'}\nfrom: {source}\nstages:\n"
        "  - prune: {method: l1-filter, sparsity: 0.5, epochs: 1, device: cpu}\n"
        "  - quantize: {method: qat, bits: 4, epochs: 1, device: cpu, calibration_images: 64}\n"
        "  - export: {}\nreport: {latency: false}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_port",
         str(_free_port()), "-m", "effdl", "run", str(tmp_path / "recipe.yaml")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "runs" / "r"
    for folder in ("01-prune", "02-quantize", "03-export"):
        assert json.loads((root / folder / "stage.json").read_text())["status"] == "done"
        assert proc.stderr.count(f"== {folder}: running") == 1  # rank 0 alone speaks
    assert proc.stderr.count("fine-tuning for 1 epoch(s)") == 2  # prune's and quantize's, from rank 0 alone
    # one fine-tune epoch written once, not once per process
    assert len((root / "01-prune" / "metrics.jsonl").read_text().splitlines()) == 1
    assert (root / "report" / "runs.csv").is_file()
    summary = json.loads((root / "02-quantize" / "summary.json").read_text())
    model, _ = load_model(root / "02-quantize" / "best.safetensors")
    data = load_dataset_for({"dataset": "synthetic"})
    measured = evaluate(model.eval(), BatchLoader.for_split(data, "test", batch_size=100))
    assert (measured.correct, measured.total) == (summary["correct"], summary["total"])


def test_torchrun_refuses_a_measuring_command_in_one_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_port",
         str(_free_port()), "-m", "effdl", "score", "resnet20"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "effdl: error" in line]
    assert errors == ["effdl: error: `effdl score` runs in one process: start it without torchrun (torchrun runs "
                      "train, distill, prune, quantize, factorize, run)"]
