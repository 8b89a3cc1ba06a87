"""The training loop: one readable loop over in-memory, on-device batches.

A run writes `<out_dir>/<name>/`:
    config.yaml        the resolved configuration
    metrics.jsonl      one JSON line per epoch (loss, accuracy, lr, images/s, time)
    last.safetensors   the latest state, enough to resume exactly (weights, EMA, optimizer, RNG)
    best.safetensors   the result's weights (EMA weights when EMA is on) as `model/`: with a
                       validation split, those of the epoch with the best validation accuracy;
                       without one, the last epoch's (the test split never chooses weights)
    summary.json       final accuracy of best.safetensors on the full test split, time, images/s,
                       and `selected_on`: "val" or "last_epoch"

Per-epoch evaluations use bf16 autocast when training does (they only rank epochs); the final
accuracy is always measured in fp32, on the weights exactly as saved.

Under torchrun (`effdl.train.distributed`) the trainer wraps the model in DistributedDataParallel:
`config.batch_size` and `config.lr` stay the global ones (each process trains on its shard with
batch_size / world_size images per step), evaluations are sharded and their counts summed exactly,
BatchNorm statistics are averaged across processes before every evaluation and save, and only rank
0 writes the run directory and shows progress. Callbacks see `trainer.model`, the bare model whose
parameters DDP trains (masks and quantizer constraints act on the real tensors, identically on every
process); the weights are checked to be identical across processes after every epoch.

Ctrl-C saves a resumable checkpoint at the current step (with the interrupted epoch's running
loss and speed, so its metrics line is written once, complete, after the resume) and raises
`effdl.errors.Interrupted`; a non-finite loss stops the run before anything is overwritten, so
last.safetensors and best.safetensors stay the last good ones.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from effdl.checkpoint import (
    lineage_entry,
    optimizer_from_checkpoint,
    optimizer_to_checkpoint,
    read_checkpoint,
    save_model,
    split_namespace,
    update_checkpoint_meta,
    with_namespace,
)
from effdl.core.hooks import Callback
from effdl.data import BatchLoader, ImageDataset
from effdl.device import default_bf16, default_channels_last, resolve_device
from effdl.errors import EffdlError, Interrupted
from effdl.measure.accuracy import Accuracy, check_model_fits_data, evaluate, evaluated_on
from effdl.measure.bits import has_quantized_layers
from effdl.train import distributed
from effdl.train.config import TrainConfig, save_config
from effdl.train.schedule import default_warmup_epochs, lr_factor


class NonFiniteLoss(EffdlError):
    """The loss became NaN or infinite; the run stopped without overwriting good checkpoints."""


@dataclass
class TrainResult:
    accuracy: float  # top-1 of the result's weights (best.safetensors) on the full test split
    correct: int
    total: int
    best_eval_accuracy: float  # validation accuracy of the chosen epoch; without validation, the last epoch's test accuracy
    epochs: int
    time_s: float
    images_per_s: float
    run_dir: str | None


def parameter_groups(
    model: nn.Module | Iterable[nn.Parameter], weight_decay: float, decay_bn_and_bias: bool
) -> list[dict]:
    """Weight decay on conv/linear weights only, unless told to decay BN scales and biases too."""
    decay, no_decay = [], []
    for p in model.parameters() if isinstance(model, nn.Module) else model:
        if p.requires_grad:
            (decay if p.ndim > 1 or decay_bn_and_bias else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def hook_parameters(callbacks: Iterable[Callback], model: nn.Module, device: torch.device) -> list[nn.Parameter]:
    """The trainable tensors the callbacks own (`Callback.parameters()`), each once, moved in place
    to `device` (the objects stay the same, so the callbacks' references stay valid).

    Raises EffdlError if a callback hands over one of the model's own parameters (the optimizer
    would see it twice) or a tensor that does not require gradients.
    """
    own = {id(p) for p in model.parameters()}
    found: dict[int, nn.Parameter] = {}
    for cb in callbacks:
        for p in cb.parameters():
            if id(p) in own:
                raise EffdlError(f"{type(cb).__name__}.parameters() returned a parameter of the model itself; "
                                 "the trainer already optimises those")
            if not isinstance(p, torch.Tensor) or not p.requires_grad:
                raise EffdlError(f"{type(cb).__name__}.parameters() must return tensors that require gradients")
            if p.device != device:
                p.data = p.data.to(device)
            found.setdefault(id(p), p)
    return list(found.values())


def build_optimizer(
    model: nn.Module, config: TrainConfig, extra: Sequence[nn.Parameter] = ()
) -> torch.optim.Optimizer:
    """The configured optimizer over `model`'s parameters, plus `extra` (the callbacks' own
    parameters, `hook_parameters`) in param groups of their own, after the model's."""
    groups = parameter_groups(model, config.weight_decay, config.decay_bn_and_bias)
    if extra:
        groups += [{**g, "name": "hooks"} for g in parameter_groups(extra, config.weight_decay,
                                                                     config.decay_bn_and_bias) if g["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    return torch.optim.AdamW(groups, lr=config.lr)


def dataset_label(dataset: str) -> str:
    """A short name for a dataset, fit for a file name: `imagefolder:/data/flowers/` -> `flowers`."""
    if dataset.startswith("imagefolder:"):
        dataset = Path(dataset.split(":", 1)[1].rstrip("/\\")).name or "imagefolder"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset)


def default_run_name(config: TrainConfig) -> str:
    """`<model>-<dataset>-<time>`, e.g. resnet20-cifar10-20250101-120000 or resnet20-flowers-..."""
    return f"{config.model.replace(':', '_')}-{dataset_label(config.dataset)}-{datetime.now():%Y%m%d-%H%M%S}"


class Trainer:
    """Train `model` on `data` as `config` says, with optional callbacks and a run directory."""

    def __init__(
        self,
        model: nn.Module,
        data: ImageDataset,
        config: TrainConfig,
        callbacks: list[Callback] | None = None,
        run_dir: str | Path | None = None,
        eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
        resume_hint: str | None = None,
        writes_results: bool = True,
    ):
        """`eval_data`: held-out validation (images uint8 [N,C,H,W], labels [N]) that chooses the best
        epoch; without it, the result is the last epoch. `resume_hint`: the command that resumes this
        run, shown when Ctrl-C stops it. `writes_results=False`: the run directory gets only the
        trainer's log (metrics.jsonl) and resumable state (last.safetensors); config.yaml,
        best.safetensors and summary.json are left to the caller that owns the directory (the
        compression pipelines, effdl.pipelines.run_dir), and the final accuracy is measured on the
        last weights in memory. Raises EffdlError if `model` records other classes than `data`."""
        self.config = config
        self.writes_results = writes_results
        self.resume_hint = resume_hint
        self.data = data
        self.callbacks = list(callbacks or [])
        self.run_dir = Path(run_dir) if run_dir is not None else None
        # Under torchrun: this process's rank and device (cuda:LOCAL_RANK or the CPU); else None.
        self.dist = distributed.current()
        self.is_main = self.dist is None or self.dist.is_main
        self.device = self.dist.device if self.dist is not None else resolve_device(config.device)
        # Automatic bf16 stays off for quantized models: bf16 rounding moves values off the quantizer grid.
        quantized = has_quantized_layers(model)
        self.bf16 = (default_bf16(self.device) and not quantized) if config.bf16 is None else config.bf16
        self.channels_last = default_channels_last(self.device) if config.channels_last is None else config.channels_last
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)

        check_model_fits_data(model, data)  # fine-tuning on other classes would fail or mislabel
        model.effdl_data = data.data_meta()  # saved with every checkpoint: input size, normalisation, classes
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=memory_format)
        # Each process holds its shard of the data; the config's batch is the global one.
        self.shard = (self.dist.rank, self.dist.world_size) if self.dist is not None else None
        per_process_batch = check_batch_fits(config.batch_size, len(data.train_labels))
        self.train_loader = BatchLoader.for_split(
            data, "train", batch_size=per_process_batch, train=True, augment=config.augment,
            device=self.device, channels_last=self.channels_last, seed=config.seed, shard=self.shard,
        )
        # The best epoch is chosen on held-out validation images when given; the test split only
        # measures (choosing on it would report a maximum over epochs as if it were one result).
        self.select_on_val = eval_data is not None
        if eval_data is not None:
            self.eval_loader = BatchLoader(
                *eval_data, mean=data.mean, std=data.std, batch_size=config.eval_batch_size,
                num_classes=data.num_classes, device=self.device, channels_last=self.channels_last,
                shard=self.shard,
            )
        else:
            self.eval_loader = self.test_loader()
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = config.epochs * self.steps_per_epoch
        warmup = default_warmup_epochs(config.schedule, config.epochs, config.warmup_epochs)
        self.warmup_steps = int(warmup * self.steps_per_epoch)
        self.milestone_steps = tuple(m * self.steps_per_epoch for m in config.milestones)

        # SyncBatchNorm replaces the BatchNorms after every structural edit (quantizers, pruning) the
        # caller made and before DDP wraps the model; fit() puts the plain classes back at the end.
        self._sync_batchnorm: dict[str, type] = {}
        if config.sync_batchnorm and self.dist is not None:
            if self.device.type != "cuda":
                raise EffdlError("sync_batchnorm needs GPUs (torch's SyncBatchNorm runs on CUDA only); "
                                 "leave it off on CPUs")
            self._sync_batchnorm = distributed.convert_sync_batchnorm(self.model)
        self._hook_params = hook_parameters(self.callbacks, self.model, self.device)
        self.optimizer = build_optimizer(self.model, config, self._hook_params)
        # The module the training forward runs through: DDP around self.model under torchrun.
        self.train_module = distributed.wrap(self.model)
        self._state_synced = self.dist is None  # see the first optimizer step in train_one_epoch
        self.ema = self._new_ema() if config.ema_decay else None
        self.train_step = torch.compile(self._forward_loss) if config.compile else self._forward_loss
        self.epoch = 0  # the epoch in progress (0-based)
        self.step = 0  # optimizer steps taken so far
        self.best_accuracy = -1.0
        self.history: list[dict[str, Any]] = []  # each epoch's logged metrics, for the epochs this object ran
        self._epoch_start_rng: torch.Tensor | None = None
        self._skip_batches = 0
        # The epoch in progress's running sums (loss_sum, correct, seen, train seconds): saved on
        # Ctrl-C so the resumed epoch's metrics cover the whole epoch.
        self._partial: dict[str, Any] = {}
        self._resumed_partial: dict[str, float] = {}
        self._tensorboard = None

    # -- building blocks -------------------------------------------------------------------------
    def test_loader(self) -> BatchLoader:
        return BatchLoader.for_split(
            self.data, "test", batch_size=self.config.eval_batch_size, device=self.device,
            channels_last=self.channels_last, shard=self.shard,
        )

    def _new_ema(self) -> AveragedModel:
        return AveragedModel(
            self.model, multi_avg_fn=get_ema_multi_avg_fn(self.config.ema_decay), use_buffers=True
        )

    def rebuild_optimizer(self) -> None:
        """Rebuild optimizer (and EMA) after a callback changed the model's parameters."""
        self._hook_params = hook_parameters(self.callbacks, self.model, self.device)
        self.optimizer = build_optimizer(self.model, self.config, self._hook_params)
        self.train_module = distributed.wrap(self.model)  # DDP must see the new parameters
        if self.ema is not None:
            self.ema = self._new_ema()

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and kept as 'best': the EMA when enabled."""
        return self.ema.module if self.ema is not None else self.model

    def set_lr(self) -> float:
        factor = lr_factor(
            self.config.schedule, self.step, self.total_steps, self.warmup_steps, self.milestone_steps,
            self.config.gamma,
        )
        lr = self.config.lr * factor
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _forward_loss(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.train_module(images)
            loss = nn.functional.cross_entropy(logits, targets, label_smoothing=self.config.label_smoothing)
        return logits, loss

    def _checkpoint_before(self) -> str:
        """Where the weights from before a failure are: only a checkpoint that was written is named."""
        last = self.run_dir / "last.safetensors" if self.run_dir else None
        if last is None or not last.is_file():
            return "No checkpoint was written before it"
        return f"The last checkpoint, from before it: {last}"

    def evaluate(self, loader: BatchLoader | None = None) -> Accuracy:
        """The eval model's accuracy on `loader` (default: validation, else test); under torchrun
        each process measures its shard and the counts are summed."""
        acc = evaluate(self.eval_model, loader or self.eval_loader, tta=self.config.tta, autocast=self.bf16)
        return distributed.reduce_accuracy(acc)

    def _agree_before_evaluation(self) -> None:
        """Under torchrun: average BatchNorm statistics (model and EMA) across processes, and check
        that the weights are still identical on every process."""
        if self.dist is None:
            return
        distributed.average_batchnorm(self.model)
        if self.ema is not None:
            distributed.average_batchnorm(self.ema.module)
        distributed.check_in_sync(self.model, f"after epoch {self.epoch + 1}")

    # -- the loop --------------------------------------------------------------------------------
    def train_one_epoch(self, progress) -> dict[str, float]:
        self.model.train()
        self.train_loader.set_epoch(self.epoch)
        self._epoch_start_rng = self.train_loader.generator.get_state()
        carried = self._resumed_partial  # what the interrupted run had done of this epoch
        self._resumed_partial = {}
        if not self.is_main:  # rank 0 carries the interrupted epoch's sums for every process
            carried = {"train_time_s": carried.get("train_time_s", 0.0)}
        loss_sum = torch.full((), float(carried.get("loss_sum", 0.0)), device=self.device)
        correct = torch.full((), float(carried.get("correct", 0.0)), device=self.device)
        seen, done_before = int(carried.get("seen", 0)), float(carried.get("train_time_s", 0.0))
        trained_time = done_before
        self._partial = {"loss_sum": loss_sum, "correct": correct, "seen": seen, "train_time_s": trained_time}
        check_every = 1 if self.device.type == "cpu" else 50
        task = progress.add_task(f"epoch {self.epoch + 1}/{self.config.epochs}", total=self.steps_per_epoch)
        start = time.perf_counter()
        for i, (images, targets) in enumerate(self.train_loader):
            if i < self._skip_batches:  # resuming mid-epoch: replay the data order, skip the work
                progress.advance(task)
                continue
            # One step is whole or not at all: a Ctrl-C mid-step (after the forward pass updated the
            # BatchNorm statistics, before the optimizer step) would save a state no resume can repeat.
            with _interrupt_deferred():
                lr = self.set_lr()
                logits, loss = self.train_step(images, targets)
                for cb in self.callbacks:
                    extra = cb.extra_loss(self, images, targets, logits, loss)
                    if extra is not None:
                        loss = loss + extra
                if (i + 1) % check_every == 0 and not torch.isfinite(loss):
                    raise NonFiniteLoss(f"loss became {loss.item()} at epoch {self.epoch + 1}, step {self.step}; "
                                        f"stopped. {self._checkpoint_before()} (try a lower --lr or --grad-clip)")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.dist is not None and self._hook_params:  # DDP averages the model's gradients only
                    distributed.average_gradients(self._hook_params)
                if self.config.grad_clip:
                    nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                             self.config.grad_clip)
                self.optimizer.step()
                if not self._state_synced:
                    # Modules that initialise themselves from their first batch (lazy quantizers) did so
                    # on each process's own shard: rank 0's state becomes everyone's, once.
                    distributed.sync_module_state(self.model)
                    self._state_synced = True
                self.step += 1
                for cb in self.callbacks:  # before the EMA update, so weight constraints reach it at once
                    cb.on_after_step(self)
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
                hard = targets if targets.ndim == 1 else targets.argmax(1)
                loss_sum += loss.detach() * len(hard)
                correct += (logits.detach().argmax(1) == hard).sum()
                seen += len(hard)
                trained_time = done_before + time.perf_counter() - start
                self._partial.update(seen=seen, train_time_s=trained_time)
            progress.update(
                task, advance=1,
                description=(
                    f"epoch {self.epoch + 1}/{self.config.epochs} loss {loss_sum.item() / seen:.3f} "
                    f"acc {correct.item() / seen:.3f} {seen / trained_time:,.0f} img/s lr {lr:.4f}"
                ) if (i + 1) % 20 == 0 or i + 1 == self.steps_per_epoch else None,
            )
        progress.remove_task(task)
        self._skip_batches = 0
        total_loss, total_correct, total_seen = distributed.reduce_sums(loss_sum.item(), correct.item(), seen)
        if total_seen and not math.isfinite(total_loss):
            raise NonFiniteLoss(f"loss became non-finite during epoch {self.epoch + 1}; stopped. "
                                f"{self._checkpoint_before()} (try a lower --lr or --grad-clip)")
        return {
            "train_loss": total_loss / max(total_seen, 1),
            "train_acc": total_correct / max(total_seen, 1),
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": total_seen / max(trained_time, 1e-9),
            "train_time_s": trained_time,
        }

    def fit(self) -> TrainResult:
        """Train for the configured epochs (continuing a resumed run) and write the summary."""
        self._prepare_run_dir()
        for cb in self.callbacks:
            cb.on_train_start(self)
        start = time.perf_counter()
        images_per_s = []
        try:
            with distributed.sigterm_as_interrupt(), _progress(self.config.progress and self.is_main) as progress:
                while self.epoch < self.config.epochs:
                    for cb in self.callbacks:
                        cb.on_epoch_start(self, self.epoch)
                    metrics = {"epoch": self.epoch + 1, **self.train_one_epoch(progress)}
                    self._agree_before_evaluation()
                    acc = self.evaluate()
                    metrics.update(eval_loss=acc.loss, eval_acc=acc.top1, time_s=time.perf_counter() - start)
                    for cb in self.callbacks:
                        cb.on_epoch_end(self, self.epoch, metrics)
                    images_per_s.append(metrics["images_per_s"])
                    # The epoch's line, result weights and resumable state are written together:
                    # a Ctrl-C here waits until all three are on disk.
                    with _interrupt_deferred():
                        self.epoch += 1
                        self._partial = {}
                        self._log(metrics)
                        if not self.select_on_val or acc.top1 > self.best_accuracy:
                            self.best_accuracy = acc.top1
                            if self.writes_results:
                                self._save_best()
                        self._save_last()
        except KeyboardInterrupt:
            if self.run_dir is None:
                raise
            self._save_last(mid_epoch=True)
            hint = self.resume_hint or f"{self.run_dir / 'last.safetensors'} holds the interrupted state"
            raise Interrupted(f"interrupted; {hint}") from None
        except RuntimeError as exc:
            if self.dist is None or not distributed.is_peer_failure(exc):
                raise
            # Another process died or stopped: its peers' collectives fail. Rank 0's weights are
            # those of the last step every process finished, so they resume exactly.
            saved = ""
            if self.run_dir is not None:
                self._save_last(mid_epoch=True)
                saved = f"; {self.resume_hint or self.run_dir / 'last.safetensors'}"
            raise distributed.PeerFailure(
                f"another training process stopped during epoch {self.epoch + 1} (step {self.step}){saved} "
                f"(its own output says why: {str(exc).splitlines()[0][:160]})"
            ) from None
        for cb in self.callbacks:
            cb.on_train_end(self)
        if self._sync_batchnorm:  # the result holds plain BatchNorms again (fold, export, reload)
            distributed.revert_sync_batchnorm(self.model, self._sync_batchnorm)
            if self.ema is not None:
                distributed.revert_sync_batchnorm(self.ema.module, self._sync_batchnorm)
        if self.run_dir is None or not self.writes_results:
            self.best_accuracy = max(self.best_accuracy, 0.0)
            final = distributed.reduce_accuracy(evaluate(self.eval_model, self.test_loader(), tta=self.config.tta))
        else:
            final = self._final_evaluation()
            # best.safetensors' lineage names the accuracy once it is measured on the test split
            if self.is_main:
                update_checkpoint_meta(self.run_dir / "best.safetensors", lineage=self._lineage(final.top1))
        result = TrainResult(
            accuracy=final.top1, correct=final.correct, total=final.total,
            best_eval_accuracy=self.best_accuracy, epochs=self.epoch, time_s=time.perf_counter() - start,
            images_per_s=sum(images_per_s) / max(len(images_per_s), 1),
            run_dir=str(self.run_dir) if self.run_dir else None,
        )
        self._write_summary(result)
        distributed.barrier()  # the other processes return once rank 0's files are all written
        return result

    # -- run directory ---------------------------------------------------------------------------
    def _prepare_run_dir(self) -> None:
        if self.run_dir is None or not self.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.writes_results:
            save_config(self.config, self.run_dir / "config.yaml")
        if self.config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise EffdlError("tensorboard logging needs `pip install tensorboard`") from None
            self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))

    def _log(self, metrics: dict[str, Any]) -> None:
        self.history.append(metrics)
        if self.run_dir is None or not self.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self._tensorboard is not None:
            for key, value in metrics.items():
                if key != "epoch":
                    self._tensorboard.add_scalar(key, value, metrics["epoch"])
            self._tensorboard.flush()

    def _config_meta(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    def _lineage(self, accuracy: float | None = None) -> list[dict[str, Any]] | None:
        """This run's lineage (effdl.checkpoint): one "train" entry; None for a compression's
        fine-tune (writes_results=False), whose run writes the lineage of its own result."""
        if self.run_dir is None or not self.writes_results:
            return None
        spec = getattr(self.model, "effdl_spec", None) or {"name": self.config.model}
        return [lineage_entry("train", config=self._config_meta(), run=self.run_dir.name,
                              dataset=self.config.dataset, model=spec["name"], epochs=self.epoch, accuracy=accuracy)]

    def _lineage_meta(self) -> dict[str, Any]:
        lineage = self._lineage()
        return {"lineage": lineage} if lineage is not None else {}

    def _save_best(self) -> None:
        if self.run_dir is not None and self.is_main:
            save_model(
                self.run_dir / "best.safetensors", _bare(self.eval_model, self.model),
                config=self._config_meta(), metrics={"eval_acc": self.best_accuracy, "epoch": self.epoch},
                extra_meta=self._lineage_meta(),
            )

    def _save_last(self, mid_epoch: bool = False) -> None:
        """Write last.safetensors (rank 0 only; no collective, so it also runs after a peer died)."""
        if self.run_dir is None or not self.is_main:
            return
        optim_tensors, optim_meta = optimizer_to_checkpoint(self.optimizer)
        extra = {**optim_tensors, "extra/torch_rng": torch.get_rng_state()}
        epoch_rng = self._epoch_start_rng if mid_epoch else None
        if epoch_rng is not None:
            extra["extra/loader_rng"] = epoch_rng
        else:
            extra["extra/loader_rng"] = self.train_loader.generator.get_state()
        if self.ema is not None:
            extra.update(with_namespace(self.ema.module.state_dict(), "ema"))
        # The hooks' own trainable tensors (connectors, learned targets...), in the order the hooks give them.
        for index, param in enumerate(hook_parameters(self.callbacks, self.model, self.device)):
            extra[f"hooks/{index}"] = param.detach()
        partial = {k: float(v) for k, v in self._partial.items()} if mid_epoch else {}
        if partial and self.dist is not None:
            # Rank 0 knows only its share of the interrupted epoch: every process saw as many images
            # (exact), the loss and accuracy sums are estimated from rank 0's share.
            partial.update({k: partial[k] * self.dist.world_size for k in ("loss_sum", "correct", "seen") if k in partial})
        state = {
            "epoch": self.epoch, "step": self.step, "best_accuracy": self.best_accuracy,
            "batches_done": self.step - self.epoch * self.steps_per_epoch if mid_epoch else 0,
            "epoch_partial": partial,
            "ema_n_averaged": int(self.ema.n_averaged) if self.ema is not None else 0,
            "optimizer": optim_meta,
        }
        save_model(
            self.run_dir / "last.safetensors", _bare(self.model, self.model), config=self._config_meta(),
            extra_tensors=extra, extra_meta={"train_state": state, **self._lineage_meta()},
        )

    def resume(self, checkpoint: str | Path) -> None:
        """Continue from a `last.safetensors` written by this trainer."""
        def read() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            tensors, meta = read_checkpoint(checkpoint)
            if meta.get("train_state") is None:
                raise EffdlError(f"{checkpoint} holds no training state to resume from")
            return tensors, meta

        # Under torchrun rank 0 reads the file and every process gets the same state.
        tensors, meta = distributed.on_main_then_share(read)
        state = meta["train_state"]
        try:
            self.model.load_state_dict(split_namespace(tensors, "model"))
        except RuntimeError as exc:  # another architecture: a pruned, factorized or quantized run's state
            detail = " ".join(str(exc).split())[:200]
            raise EffdlError(f"{checkpoint} holds the state of another model than this run's ({detail}); "
                             "resume a run with the command that started it") from None
        self._restore_hook_parameters(checkpoint, split_namespace(tensors, "hooks"))  # before their optimizer state
        optimizer_from_checkpoint(self.optimizer, tensors, state["optimizer"])
        if self.ema is not None:
            self.ema.module.load_state_dict(split_namespace(tensors, "ema"))
            self.ema.n_averaged.fill_(state["ema_n_averaged"])
        torch.set_rng_state(tensors["extra/torch_rng"])
        self.train_loader.generator.set_state(tensors["extra/loader_rng"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.best_accuracy = state["best_accuracy"]
        self._skip_batches = state["batches_done"]
        self._resumed_partial = dict(state.get("epoch_partial") or {})
        self._drop_unsaved_epochs()

    def _restore_hook_parameters(self, checkpoint: str | Path, saved: dict[str, torch.Tensor]) -> None:
        """Put back the hooks' own tensors saved by `_save_last`; the same hooks must be given again."""
        params = hook_parameters(self.callbacks, self.model, self.device)
        if len(saved) != len(params) or any(saved[str(i)].shape != p.shape for i, p in enumerate(params)):
            raise EffdlError(
                f"{checkpoint} was saved with {len(saved)} hook tensor(s), these callbacks have {len(params)} "
                "(or of other shapes): resume with the callbacks the run was started with"
            )
        with torch.no_grad():
            for index, param in enumerate(params):
                param.copy_(saved[str(index)])

    def _drop_unsaved_epochs(self) -> None:
        """Forget metrics lines of epochs the resumed state had not finished (a run killed between
        writing an epoch's line and its checkpoint), so each epoch is logged once."""
        path = self.run_dir / "metrics.jsonl" if self.run_dir is not None and self.is_main else None
        if path is None or not path.is_file():
            return
        lines = path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("epoch", 0) <= self.epoch]
        if len(kept) != len(lines):
            path.write_text("".join(line + "\n" for line in kept))

    def _final_evaluation(self) -> Accuracy:
        from effdl.checkpoint import build_model, load_model

        path = self.run_dir / "best.safetensors"
        if self.dist is None:
            best, _ = load_model(path)
        else:  # rank 0 reads the file as saved; every process measures its shard of the test split
            tensors, meta = distributed.on_main_then_share(lambda: read_checkpoint(path))
            best = build_model(meta)
            best.load_state_dict(split_namespace(tensors, "model"))
            best.eval()
        best = best.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return distributed.reduce_accuracy(evaluate(best, self.test_loader(), tta=self.config.tta))

    def _write_summary(self, result: TrainResult) -> None:
        if self.run_dir is None or not self.writes_results or not self.is_main:
            if self._tensorboard is not None:
                self._tensorboard.close()
            return
        summary = {
            "name": self.run_dir.name, "kind": "train", **asdict(result), "dataset": self.config.dataset,
            "model": getattr(self.model, "effdl_spec", {"name": self.config.model}),
            "device": str(self.device), "checkpoint": "best.safetensors",
            "processes": self.dist.world_size if self.dist is not None else 1,
            # as quantize and prune say it, so `effdl report` marks accuracies measured on a subset
            "evaluated_on": evaluated_on(self.config.test_limit, result.total),
            "selected_on": "val" if self.select_on_val else "last_epoch",
            "tta": self.config.tta,  # the report marks it: a flip-averaged accuracy is not a plain one
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if self._tensorboard is not None:
            self._tensorboard.close()


def _bare(model: nn.Module, original: nn.Module) -> nn.Module:
    """The model to save: carries the original's spec/transforms (EMA copies and compiles may not)."""
    for attr in ("effdl_spec", "effdl_transforms", "effdl_data"):
        if hasattr(original, attr):
            setattr(model, attr, getattr(original, attr))
    return model


def check_batch_fits(batch_size: int, train_images: int) -> int:
    """The per-process batch of the global `batch_size` (all of it without torchrun). Raises
    EffdlError when the processes do not divide it, or when a process's share of the
    `train_images` is smaller than its batch (an epoch would have no step). Callers that do work
    before building a Trainer call it first, so a run they cannot train is refused before that work."""
    per_process = distributed.per_process_batch(batch_size)
    world = distributed.world_size()
    if train_images // world < per_process:
        shards = f" (split over {world} processes)" if world > 1 else ""
        raise EffdlError(f"batch size {batch_size} is larger than the {train_images} training images{shards}")
    return per_process


@contextlib.contextmanager
def _interrupt_deferred():
    """Hold back Ctrl-C (SIGINT) until the block is done, then raise it; only in the main thread,
    where Python delivers signals (elsewhere the block runs as is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    # SIGTERM too when someone made it interrupt (distributed.sigterm_as_interrupt, under torchrun).
    term = signal.getsignal(signal.SIGTERM)
    defer_term = callable(term) and distributed.current() is not None
    if defer_term:
        signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        if defer_term:
            signal.signal(signal.SIGTERM, term)
    if received:
        raise KeyboardInterrupt


def _progress(enabled: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    if not enabled:
        return _NullProgress()
    if not (sys.stdout.isatty() and sys.stderr.isatty()):  # CI logs, nohup: rich's live bar shows nothing
        return _EpochLines()
    return Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(), transient=True)


class _NullProgress(contextlib.AbstractContextManager):
    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def advance(self, *args, **kwargs) -> None:
        pass

    def update(self, *args, **kwargs) -> None:
        pass

    def remove_task(self, *args, **kwargs) -> None:
        pass


class _EpochLines(_NullProgress):
    """Progress for a non-interactive terminal: one plain stderr line per epoch (its last description:
    epoch, loss, accuracy, images/s, learning rate) with the time since training started."""

    def __init__(self) -> None:
        self.description, self.start = "", time.perf_counter()

    def add_task(self, description: str, *args, **kwargs) -> int:
        self.description = description
        return 0

    def update(self, *args, description: str | None = None, **kwargs) -> None:
        self.description = description or self.description

    def remove_task(self, *args, **kwargs) -> None:
        print(f"{self.description}, {time.perf_counter() - self.start:.0f} s elapsed", file=sys.stderr, flush=True)
