"""The one fine-tuning path of every compression technique.

A compressed model is fine-tuned as its source run was trained: the fine-tune's TrainConfig starts
from the SOURCE checkpoint's recorded config (data, augmentation, weight decay, label smoothing,
optimizer, batch size...) and overrides only what a compression step sets: epochs, learning rate
and its schedule (cosine, no warm-up), device, seed, compile, and the data limits. Keys that
describe the source run itself (its name, validation split, EMA, milestones) are not inherited.
A checkpoint without a recorded config fine-tunes with TrainConfig's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effdl.console import say
from effdl.errors import EffdlError

if TYPE_CHECKING:
    from torch import nn

    from effdl.core.hooks import Callback
    from effdl.data import ImageDataset
    from effdl.train import TrainConfig

# Keys of the source run's config that describe that run only, never a fine-tune of its model:
# where it was written, how its training images were held out or subset, its EMA and multistep
# milestones and factor (epochs of a 200-epoch run; a fine-tune has its own schedule), its TensorBoard logs.
SOURCE_RUN_ONLY = ("name", "out_dir", "subset", "subset_per_class", "val_size", "ema_decay", "milestones",
                   "gamma", "tensorboard")


@dataclass
class FineTuneOptions:
    """What a compression step sets for its fine-tune; everything else comes from the source run."""

    epochs: int = 0
    lr: float = 0.01  # peak learning rate of the cosine schedule
    batch_size: int | None = None  # None: the source run's (TrainConfig's default if it recorded none)
    bf16: bool | None = None  # None: the source run's setting (auto when it recorded none)
    compile: bool = False  # torch.compile the training step
    device: str = "auto"
    seed: int = 0
    train_limit: int | None = None  # recorded in config.yaml; the data passed in is already limited
    test_limit: int | None = None
    data_root: str | None = None  # None: the source run's
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    overrides: dict[str, Any] = field(default_factory=dict)  # any other TrainConfig key ('augment.cutout'), last

    def validate(self) -> None:
        if self.epochs < 0:
            raise EffdlError(f"--epochs must be >= 0, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise EffdlError(f"--batch-size must be >= 1, got {self.batch_size}")


def finetune_config(
    source_config: dict[str, Any] | None, dataset: str, model_name: str, options: FineTuneOptions,
    epochs: int | None = None, model_kwargs: dict[str, Any] | None = None,
) -> TrainConfig:
    """The TrainConfig of a fine-tune of a model trained with `source_config` (a checkpoint's
    recorded `config`, possibly empty), on `dataset`, for `epochs` (default `options.epochs`, >= 1).

    Raises EffdlError (naming the key) if the source config or the overrides are not a valid TrainConfig.
    """
    from effdl.train.config import for_this_machine, make_config, merge, without_unread_settings

    # The source's settings its own optimizer never read (momentum with adamw) had no effect: left out.
    base = for_this_machine(without_unread_settings(
        {k: v for k, v in (source_config or {}).items() if k not in SOURCE_RUN_ONLY}))
    values = {
        **base,
        "dataset": dataset, "model": base.get("model", model_name), "epochs": options.epochs if epochs is None else epochs,
        "lr": options.lr, "schedule": options.schedule, "warmup_epochs": options.warmup_epochs,
        "device": options.device, "seed": options.seed, "compile": options.compile,
        "train_limit": options.train_limit, "test_limit": options.test_limit,
    }
    if "model_kwargs" not in base and model_kwargs:
        values["model_kwargs"] = model_kwargs
    if options.batch_size is not None:
        values["batch_size"] = options.batch_size
    if options.bf16 is not None:
        values["bf16"] = options.bf16
    if options.data_root is not None:
        values["data_root"] = options.data_root
    return make_config(merge(values, options.overrides), source="fine-tuning options over the source run's config")


class FineTuner:
    """Fine-tunes models with the trainer, as `finetune_config` says; callable once per stage
    (a pruning round, a slimming penalty phase...), each stage recorded in `results`.

    `run_dir`: the compressed run's directory; the trainer appends each epoch to its metrics.jsonl
    and keeps its resumable state there, but never writes config.yaml, best.safetensors or
    summary.json (effdl.pipelines.run_dir does, once). `callbacks` are added to every stage's own
    (distillation from the uncompressed model, for instance). `resume_from`: a last.safetensors
    the first fine-tune continues from (an interrupted run's; only for techniques that fine-tune
    once, since the file holds the latest fine-tune's state alone).
    """

    def __init__(
        self, data: ImageDataset, source_config: dict[str, Any] | None, model_name: str, options: FineTuneOptions,
        *, callbacks: list[Callback] | None = None, run_dir: str | Path | None = None, resume_hint: str | None = None,
        model_kwargs: dict[str, Any] | None = None, resume_from: str | Path | None = None,
    ):
        options.validate()
        self.resume_from = Path(resume_from) if resume_from is not None else None
        self.data = data
        self.options = options
        self.source_config = source_config or {}
        self.model_name = model_name
        self.model_kwargs = model_kwargs
        self.callbacks = list(callbacks or [])
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.resume_hint = resume_hint
        self.results: list[dict[str, Any]] = []
        # Validated now, so a bad source config or override, or a batch the training images (or the
        # torchrun processes) cannot take, fails before any compression work.
        self.planned = self.config() if options.epochs >= 1 else None
        if self.planned is not None:
            from effdl.train.trainer import check_batch_fits

            check_batch_fits(self.planned.batch_size, len(data.train_labels))

    def config(self, epochs: int | None = None) -> TrainConfig:
        """The fine-tune's TrainConfig for `epochs` (default: the options' epochs)."""
        return finetune_config(self.source_config, self.data.name, self.model_name, self.options, epochs,
                               self.model_kwargs)

    def __call__(self, model: nn.Module, epochs: int | None = None, callbacks: list[Callback] = ()) -> nn.Module:
        """Fine-tune `model` for `epochs` (default the options'; 0 returns it unchanged) with the
        technique's `callbacks` (masks, quantizers, penalties); returns the trained model."""
        from effdl.train import Trainer

        epochs = self.options.epochs if epochs is None else epochs
        if epochs < 1:
            return model
        config = self.config(epochs)
        say(f"fine-tuning for {epochs} epoch(s) on {len(self.data.train_labels):,} training images"
            f"{' (compiling the step first: minutes)' if config.compile else ''}...")
        trainer = Trainer(model, self.data, config, callbacks=[*callbacks, *self.callbacks], run_dir=self.run_dir,
                          resume_hint=self.resume_hint, writes_results=False)
        if self.resume_from is not None:
            if self.results:
                raise EffdlError("only a technique's first fine-tune can resume")
            say(f"continuing the interrupted fine-tune from {self.resume_from}...")
            trainer.resume(self.resume_from)  # a model compressed otherwise fails here, naming the tensor
            self.resume_from = None
        result = trainer.fit()
        # Each epoch's test accuracy shows whether the fine-tune stopped while still improving.
        self.results.append({
            "epochs": epochs, "lr": config.lr, "batch_size": config.batch_size, "bf16": trainer.bf16,
            "compiled": config.compile, "accuracy": result.accuracy, "time_s": round(result.time_s, 1),
            "accuracy_per_epoch": [round(m["eval_acc"], 4) for m in trainer.history],
        })
        return trainer.model
