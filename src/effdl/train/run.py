"""`train(config)`: the whole job behind `effdl train` — data, model, run directory, resume.

Under torchrun (`torchrun --nproc_per_node N -m effdl train ...`) every process runs this same
job: `train` and `resume` join the process group (`effdl.train.distributed.init_from_env`), rank 0
alone claims and writes the run directory and decodes the data first (filling the cache the
others then read), the run name is rank 0's, and an error any process meets is raised on all of
them alike (rank 0 reports it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from effdl.core.hooks import Callback
from effdl.train import distributed
from effdl.data import ImageDataset, load_dataset, subset, train_val_split
from effdl.errors import EffdlError
from effdl.fileio import atomic_write, claim_run_dir
from effdl.models import create_model_for_data
from effdl.train.config import TrainConfig, for_this_machine, make_config, read_config_file, without_unread_settings
from effdl.train.trainer import Trainer, TrainResult, default_run_name


def prepare_data(config: TrainConfig) -> tuple[ImageDataset, tuple | None]:
    """The training data as the config asks, and held-out validation tensors if any.

    With `val_size`, the validation images leave the training split and choose the best
    checkpoint; the test split stays the real one, used only for the final accuracy.
    """
    size_options = {"image_size": config.image_size, "resize": config.resize} if config.image_size is not None else {}
    data = load_dataset(config.dataset, root=config.data_root, train_limit=config.train_limit,
                        test_limit=config.test_limit, limit_seed=config.seed, **size_options)
    val = None
    if config.val_size:
        held_out = train_val_split(data, config.val_size, seed=config.seed)
        val = (held_out.test_images, held_out.test_labels)
        data = dataclasses.replace(held_out, name=data.name, test_images=data.test_images,
                                   test_labels=data.test_labels, info=data.info)
    if config.subset or config.subset_per_class:
        data = subset(data, n=config.subset, per_class=config.subset_per_class, seed=config.seed)
    return data, val


# A run that needs more than its training state to continue (a distillation's teacher) holds this
# file: {"command": how to continue it, "config": what a resume must match}; `resume` without the
# run's callbacks refuses it, naming the command.
RESUME_RECORD = "resume.json"


def _resume_hint(run_dir: Path) -> str:
    command = (read_resume_record(run_dir) or {}).get("command")
    return f"resume with `{command or f'effdl train --resume {run_dir}'}`"


def write_resume_record(run_dir: Path, command: str, config: dict) -> None:
    """Write `run_dir`'s RESUME_RECORD (before training starts; see above)."""
    text = json.dumps({"command": command, "config": config}, indent=2) + "\n"
    atomic_write(run_dir / RESUME_RECORD, lambda tmp: Path(tmp).write_text(text))


def record_differences(recorded: dict, expected: dict) -> list[str]:
    """Key by key, how `expected` differs from a recorded config ("key old -> new")."""
    return [f"{key} {recorded.get(key)!r} -> {expected.get(key)!r}" for key in sorted(set(recorded) | set(expected))
            if recorded.get(key) != expected.get(key)]


def check_resumable(run_dir: Path, expected: dict, describe: Callable[[dict, dict], list[str]] = record_differences,
                    same: str = "options") -> Path:
    """`run_dir`'s last.safetensors, after checking that the run is interrupted (not finished) and
    that its RESUME_RECORD's config is `expected`. Raises EffdlError for a finished run, no
    last.safetensors, no readable record, or a different config, naming each difference
    (`describe(recorded, expected)`; `same`: what a user must give again, for the message)."""
    if (run_dir / "summary.json").is_file():
        raise EffdlError(f"{run_dir} holds a finished run (summary.json): nothing to resume")
    last = run_dir / "last.safetensors"
    if not last.is_file():
        raise EffdlError(f"{run_dir} holds no interrupted run (no last.safetensors) to resume")
    recorded = (read_resume_record(run_dir) or {}).get("config")
    if not isinstance(recorded, dict):
        raise EffdlError(f"{run_dir} has no readable {RESUME_RECORD} saying how it was started: start it again "
                         "with --overwrite")
    changes = describe(recorded, expected)
    if changes:
        raise EffdlError(f"{run_dir} was started otherwise ({'; '.join(changes)}): resume it with the same {same}, "
                         "or start again with --overwrite")
    return last


def read_resume_record(run_dir: Path) -> dict | None:
    """`run_dir`'s RESUME_RECORD, None when it has none (or an unreadable one)."""
    try:
        record = json.loads((run_dir / RESUME_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def train(
    config: TrainConfig,
    callbacks: list[Callback] | None = None,
    data: ImageDataset | None = None,
    *,
    overwrite: bool = False,
) -> TrainResult:
    """Train `config.model` on `config.dataset` into `<out_dir>/<name>/` and return the result.

    An existing run directory of that name is refused (EffdlError) unless `overwrite`, which deletes
    it first. Ctrl-C saves a resumable state and raises `effdl.errors.Interrupted`. Under torchrun,
    the same call in every process trains one model with DistributedDataParallel (module docstring).
    """
    distributed.init_from_env(config.device)
    config = distributed.broadcast_object(config)  # one config (and run name) for every process
    with _reported_once():
        distributed.agree(lambda: distributed.per_process_batch(config.batch_size))
        if data is None:
            data, val = _main_first(lambda: prepare_data(config))
        else:
            val = None
        torch.manual_seed(config.seed)  # the seed governs weight initialisation too
        model = create_model_for_data(config.model, data.num_classes, config.model_kwargs, data.name)
        name = distributed.broadcast_object(config.name or default_run_name(config))  # rank 0's clock
        config = config.model_copy(update={"name": name})
        run_dir = Path(config.out_dir) / name
        hint = f"resume it with --resume {run_dir} or pick another --name"
        distributed.on_main_then_share(lambda: claim_run_dir(run_dir, overwrite=overwrite, hint=hint))
        trainer = distributed.agree(lambda: Trainer(model, data, config, callbacks=callbacks, run_dir=run_dir,
                                                    eval_data=val, resume_hint=_resume_hint(run_dir)))
        return trainer.fit()


def resume(run_dir: str | Path, callbacks: list[Callback] | None = None, epochs: int | None = None) -> TrainResult:
    """Continue an interrupted run from its last.safetensors (optionally extending its epochs).

    Under torchrun, rank 0 reads the run directory and every process continues from the same state
    (the number of processes may differ from the interrupted run's; the data order then does too).
    """
    run_dir = Path(run_dir)
    record = read_resume_record(run_dir)
    if callbacks is None and record is not None:
        raise EffdlError(f"{run_dir} needs more than its training state to continue: "
                         f"resume it with `{record.get('command')}`")
    distributed.init_from_env(_resume_device(run_dir))
    with _reported_once():
        config = distributed.on_main_then_share(lambda: _resume_config(run_dir, epochs))
        data, val = _main_first(lambda: prepare_data(config))
        model = create_model_for_data(config.model, data.num_classes, config.model_kwargs, data.name)
        trainer = distributed.agree(lambda: Trainer(model, data, config, callbacks=callbacks, run_dir=run_dir,
                                                    eval_data=val, resume_hint=_resume_hint(run_dir)))
        trainer.resume(run_dir / "last.safetensors")
        return trainer.fit()


def _resume_device(run_dir: Path) -> str:
    """The device the run was configured with (to join the process group), 'auto' if unreadable
    (the full checks follow in _resume_config)."""
    try:
        return str(read_config_file(run_dir / "config.yaml").get("device", "auto"))
    except EffdlError:
        return "auto"


def _resume_config(run_dir: Path, epochs: int | None) -> TrainConfig:
    if not (run_dir / "last.safetensors").is_file():
        raise EffdlError(f"nothing to resume in {run_dir}: no last.safetensors")
    # A run started before unread settings were refused had them ignored: resumed the same way.
    values = for_this_machine(without_unread_settings(read_config_file(run_dir / "config.yaml"),
                                                      where=str(run_dir / "config.yaml")))
    if epochs is not None:
        values["epochs"] = epochs
    config = make_config(values, source=str(run_dir / "config.yaml"))
    from effdl.checkpoint import read_checkpoint_meta

    done = (read_checkpoint_meta(run_dir / "last.safetensors").get("train_state") or {}).get("epoch", 0)
    if done >= config.epochs and (run_dir / "summary.json").is_file():
        # Nothing to train: re-running the final evaluation would only overwrite the summary's
        # training time and throughput (with 0 images/s).
        raise EffdlError(f"{run_dir} already finished its {done} epochs; nothing to resume "
                         f"(--epochs N with N > {done} trains it further)")
    return config


def _main_first(load):
    """`load()` on rank 0 first (decoding fills the cache), then on the other processes (reading
    it); an error on rank 0 stops every process with the same message."""
    if distributed.current() is None:
        return load()
    loaded = []
    distributed.on_main_then_share(lambda: loaded.append(load()))  # runs on rank 0 only
    return distributed.agree(lambda: loaded[0] if loaded else load())


@contextlib.contextmanager
def _reported_once():
    """Under torchrun, an EffdlError met by one process other than rank 0 alone (not agreed on) is
    printed by that process with its rank, since the command line reports errors from rank 0 only."""
    try:
        yield
    except distributed.AgreedError:
        raise
    except EffdlError as exc:
        if distributed.current() is not None and not distributed.is_main():
            # the real stderr: the command line silences the other ranks' output (effdl.cli)
            print(f"effdl: error (rank {distributed.rank()}): {exc}", file=sys.__stderr__, flush=True)
        raise
