"""`train(config)`: the whole job behind `effdl train` — data, model, run directory, resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from effdl.core.hooks import Callback
from effdl.data import ImageDataset, load_dataset, subset, train_val_split
from effdl.errors import EffdlError
from effdl.fileio import claim_run_dir
from effdl.models import create_model
from effdl.train.config import TrainConfig, make_config, read_config_file
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


def _resume_hint(run_dir: Path) -> str:
    return f"resume with `effdl train --resume {run_dir}`"


def train(
    config: TrainConfig,
    callbacks: list[Callback] | None = None,
    data: ImageDataset | None = None,
    *,
    overwrite: bool = False,
) -> TrainResult:
    """Train `config.model` on `config.dataset` into `<out_dir>/<name>/` and return the result.

    An existing run directory of that name is refused (EffdlError) unless `overwrite`, which deletes
    it first. Ctrl-C saves a resumable state and raises `effdl.errors.Interrupted`.
    """
    if data is None:
        data, val = prepare_data(config)
    else:
        val = None
    torch.manual_seed(config.seed)  # the seed governs weight initialisation too
    model = create_model(config.model, num_classes=data.num_classes, **config.model_kwargs)
    name = config.name or default_run_name(config)
    config = config.model_copy(update={"name": name})
    run_dir = Path(config.out_dir) / name
    hint = f"resume it with --resume {run_dir} or pick another --name"
    claim_run_dir(run_dir, overwrite=overwrite, hint=hint)
    trainer = Trainer(model, data, config, callbacks=callbacks, run_dir=run_dir, eval_data=val,
                      resume_hint=_resume_hint(run_dir))
    return trainer.fit()


def resume(run_dir: str | Path, callbacks: list[Callback] | None = None, epochs: int | None = None) -> TrainResult:
    """Continue an interrupted run from its last.safetensors (optionally extending its epochs)."""
    run_dir = Path(run_dir)
    if not (run_dir / "last.safetensors").is_file():
        raise EffdlError(f"nothing to resume in {run_dir}: no last.safetensors")
    values = read_config_file(run_dir / "config.yaml")
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
    data, val = prepare_data(config)
    model = create_model(config.model, num_classes=data.num_classes, **config.model_kwargs)
    trainer = Trainer(model, data, config, callbacks=callbacks, run_dir=run_dir, eval_data=val,
                      resume_hint=_resume_hint(run_dir))
    trainer.resume(run_dir / "last.safetensors")
    return trainer.fit()
