"""`distill(config)`: train a student from scratch with a teacher (behind `effdl distill`, and the
`distill` stage a recipe runs with the previous stage's checkpoint as teacher).

The run directory is a normal training run's (`effdl.train.run.train` writes it, with the
distillation callback): config.yaml (the training keys; the distillation keys are in summary.json
and the checkpoint), metrics.jsonl, last.safetensors, best.safetensors (the last epoch's weights
unless val_size holds images out) and summary.json, whose `kind` is "distill" and which records
the teacher checkpoints, the method and its config, and both accuracies on the same test split.
best.safetensors' lineage is the (first) teacher's with a "distill" entry appended, and its
header's `distill` holds the same record as the summary's details.

The dataset defaults to the teacher's (its recorded data: name, input size, resize policy); the
teacher sees each batch re-normalised to the statistics it was trained with. Everything is
checked before training starts: an empty teacher list, a missing or corrupt checkpoint, teachers
whose classes or input size differ from the student's data, an unknown method or layer path
(close names listed), a weight out of range — each one EffdlError line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError, field_validator

from effdl.console import say
from effdl.errors import EffdlError
from effdl.train.config import TrainConfig, _explain

if TYPE_CHECKING:
    from effdl.train.trainer import TrainResult

# The keys DistillConfig adds to TrainConfig (they are not part of the training run's config.yaml).
DISTILL_KEYS = ("teacher", "method", "alpha", "beta", "temperature", "layers", "method_options")


class DistillConfig(TrainConfig):
    """A training run of `model` (the student) that also learns from `teacher`."""

    teacher: list[str] = Field(default_factory=list,
        description="teacher checkpoint(s); several: an ensemble whose logits are averaged (comma-separated)")
    method: str = Field("kd", description="kd, dkd, kd-std, fitnets, at or overhaul")
    alpha: float | None = Field(None,
        description="kd, kd-std: weight of the distillation term in (0, 1]; dkd: target-part weight; none: the method's")
    beta: float | None = Field(None,
        description="dkd: non-target-part weight; fitnets, at, overhaul: feature-loss weight; none: the method's")
    temperature: float | None = Field(None, description="softening temperature (kd, kd-std, dkd); none: the method's")
    layers: list[str] = Field(default_factory=list,
        description="feature methods: STUDENT_PATH=TEACHER_PATH pairs; none: stages paired by spatial size")
    method_options: dict[str, Any] = Field(default_factory=dict,
        description="other options of the method's config, as a YAML mapping (e.g. '{ramp_epochs: 2}')")

    @field_validator("teacher", mode="before")
    @classmethod
    def _split_teachers(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = [part.strip() for part in value.split(",")]
            if any(parts) and not all(parts):  # 'a.safetensors,' would silently be a one-teacher ensemble
                raise ValueError(f"an empty checkpoint path in the teacher list {value!r}")
            return [part for part in parts if part]
        return value

    @classmethod
    def refuse_unread_settings(cls, values: dict[str, Any]) -> None:
        """TrainConfig's rule, and a method weight the chosen method has no such option for (beta
        with kd, temperature with at): UnreadOptionError naming the key."""
        super().refuse_unread_settings(values)
        from effdl.compress.distill.methods import method_configs, refuse_unknown_options

        method = values.get("method", cls.model_fields["method"].default)
        if method in method_configs():  # an unknown one is refused with close names by method_config()
            refuse_unknown_options(method, [key for key in ("alpha", "beta", "temperature", "layers")
                                            if values.get(key) not in (None, [])])

    def method_config(self) -> Any:
        """The distillation method's technique config (effdl.compress.distill.methods), validated."""
        from effdl.compress.distill import method_config

        options = {"alpha": self.alpha, "beta": self.beta, "temperature": self.temperature,
                   "layers": tuple(self.layers) or None}
        # One value per option: merged, method_options would win and the dedicated flag be ignored.
        twice = sorted(key for key, value in options.items() if value is not None and key in self.method_options)
        if twice:
            raise EffdlError(f"--{twice[0]} and --method-options both set {twice[0]} (method_options): give it once")
        return method_config(self.method, **{**options, **self.method_options})

    def train_config(self) -> TrainConfig:
        """The training part: what config.yaml records and `effdl train` can read back."""
        return TrainConfig.model_validate(self.model_dump(exclude=set(DISTILL_KEYS)))


def _record(config: DistillConfig) -> dict[str, Any]:
    """What a resume must match: the config, less where it runs and is written (the run folder is
    the one resumed, however its path was spelled), with the teachers by their bytes."""
    from effdl.fileio import file_hash
    from effdl.train.config import MACHINE_KEYS, PRESENTATION_KEYS

    data = config.model_dump(mode="json", exclude={*PRESENTATION_KEYS, *MACHINE_KEYS, "out_dir", "name", "teacher",
                                                   "device"})
    data["teacher_sha256"] = [file_hash(path) if Path(path).is_file() else None for path in config.teacher]
    return data


CLAIM_HINT = "resume it with --resume, or pick another --name"


def _start(run_dir: Path, config: DistillConfig, overwrite: bool) -> None:
    """Claim the run directory (as train() would) and write its resume record (effdl.train.run:
    the whole DistillConfig, and the command that continues it, which `effdl train --resume` names)."""
    from effdl.fileio import claim_run_dir
    from effdl.train.run import write_resume_record

    claim_run_dir(run_dir, overwrite=overwrite, hint=CLAIM_HINT, sources=tuple(config.teacher))
    run_dir.mkdir(parents=True, exist_ok=True)
    write_resume_record(run_dir, f"effdl distill --resume --out {run_dir} (with the flags it was started with)",
                        _record(config))


def make_distill_config(values: dict[str, Any], source: str = "arguments") -> DistillConfig:
    """Validate `values` into a DistillConfig, turning validation errors into one clear line."""
    try:
        return DistillConfig.model_validate(values)
    except ValidationError as exc:
        raise _explain(exc, source, DistillConfig) from None


def _load_teachers(paths: list[str]) -> tuple[list, list[dict[str, Any]]]:
    from effdl.checkpoint import load_model
    from effdl.fileio import missing_checkpoint

    if not paths:
        raise EffdlError("the teacher ensemble is empty: give --teacher CKPT[,CKPT...]")
    models, metas = [], []
    for path in paths:
        if not Path(path).is_file():
            raise EffdlError(missing_checkpoint(path, "teacher checkpoint"))
        model, meta = load_model(path)
        models.append(model)
        metas.append(meta)
    return models, metas


def _teacher_data_defaults(config: DistillConfig, record: dict[str, Any] | None) -> DistillConfig:
    """The config with the dataset (and its image size and resize policy) taken from the teacher's
    record where the config did not set them."""
    if not record or "dataset" in config.model_fields_set:
        return config
    update: dict[str, Any] = {"dataset": record.get("dataset") or config.dataset}
    if config.image_size is None and record.get("resize") and record.get("input_size"):
        update["image_size"] = [int(side) for side in record["input_size"][1:]]
        update["resize"] = record["resize"]
    return config.model_copy(update=update)


def _check_teacher_fits(teacher, path: str, data) -> None:
    from effdl.measure.accuracy import check_model_fits_data
    from effdl.models.registry import data_meta

    try:
        check_model_fits_data(teacher, data)
    except EffdlError as exc:
        raise EffdlError(f"teacher {path}: {exc}") from None
    recorded = (data_meta(teacher) or {}).get("input_size")
    if recorded and list(recorded) != list(data.image_shape):
        raise EffdlError(f"teacher {path} was trained on {'x'.join(map(str, recorded))} images, the student's data "
                         f"has {'x'.join(map(str, data.image_shape))}: pass --image-size to match")


def build_teacher(models: list, data) -> Any:
    """The frozen `Teacher` of `models`, re-normalising the data's images to the first teacher's
    recorded statistics (all members must share them)."""
    from effdl.compress.distill import Teacher, renormalization
    from effdl.models.registry import data_meta

    records = [data_meta(m) or {} for m in models]
    stats = {(tuple(r.get("mean") or data.mean), tuple(r.get("std") or data.std)) for r in records}
    if len(stats) > 1:
        raise EffdlError("the ensemble's teachers were trained with different normalisations; "
                         "distill from teachers of one dataset")
    mean, std = stats.pop()
    change = renormalization(data.mean, data.std, mean, std)
    return Teacher(models, *(change or (None, None)))


def distill(config: DistillConfig, *, overwrite: bool = False, resume: bool = False) -> TrainResult:
    """Train `config.model` from scratch on `config.dataset` (default: the teacher's) while it
    learns from `config.teacher` by `config.method`; returns the TrainResult of the run written to
    `<out_dir>/<name>/` (see the module docstring). Refuses (EffdlError, before any training) bad
    teachers, methods, layers, weights, or an existing run unless `overwrite`.

    `resume`: continue the interrupted run `<out_dir>/<name>/` (its last.safetensors: student,
    connectors, optimizer, data order) with the same config, which its resume.json must match."""
    import torch

    from effdl.checkpoint import checkpoint_data_meta, lineage_entry, read_checkpoint_meta, source_lineage
    from effdl.checkpoint import update_checkpoint_meta
    from effdl.compress.distill import distiller
    from effdl.core.configs import config_to_dict
    from effdl.data import BatchLoader
    from effdl.device import resolve_device
    from effdl.fileio import atomic_write
    from effdl.measure import evaluate
    from effdl.models import create_model_for_data
    from effdl.train import distributed
    from effdl.train.run import prepare_data, train
    from effdl.train.run import check_resumable
    from effdl.train.run import resume as resume_run
    from effdl.train.trainer import check_batch_fits, default_run_name

    if config.model.endswith(".safetensors"):
        raise EffdlError(f"the student is an architecture to train from scratch (one of `effdl models`), not a "
                         f"checkpoint: {config.model}")
    method = config.method_config()  # an unknown method or a bad weight fails before anything loads
    distributed.init_from_env(config.device)  # under torchrun: every process distils; the teacher stays unwrapped
    models, metas = _load_teachers(config.teacher)
    config = _teacher_data_defaults(config, checkpoint_data_meta(metas[0]))
    if resume and not config.name:
        raise EffdlError("--resume continues a named run: give its --out RUN_DIR (or --out-dir and --name)")
    name = distributed.broadcast_object(config.name or "distill-" + default_run_name(config))  # rank 0's clock
    config = config.model_copy(update={"name": name})
    run_dir = Path(config.out_dir) / name
    if resume:  # before any work: a run that cannot resume is refused at once
        distributed.on_main_then_share(lambda: check_resumable(run_dir, _record(config),
                                                               same="teacher, student and options"))
    else:  # as is a run there without --overwrite, or one holding a teacher (the folder is claimed in _start)
        from effdl.fileio import claim_run_dir

        distributed.on_main_then_share(lambda: claim_run_dir(run_dir, overwrite=overwrite, hint=CLAIM_HINT,
                                                             sources=tuple(config.teacher), check_only=True))
    data, val = prepare_data(config)
    for model, path in zip(models, config.teacher):
        _check_teacher_fits(model, path, data)
    distributed.agree(lambda: check_batch_fits(config.batch_size, len(data.train_labels)))
    teacher = build_teacher(models, data)

    # The student's layer shapes come from a model built like it (train() builds the one it trains).
    # Seeded first: the connectors' initial weights follow the run's seed, not what ran before.
    torch.manual_seed(config.seed)
    probe = create_model_for_data(config.model, data.num_classes, config.model_kwargs, data.name)
    callback = distiller(method, probe, teacher, input_size=data.image_shape)
    del probe

    device = resolve_device(config.device)
    loader = BatchLoader.for_split(data, "test", batch_size=config.eval_batch_size, device=device)
    say(f"evaluating the teacher on {len(loader.labels):,} test images...")
    teacher_accuracy = evaluate(teacher.to(device), loader).top1
    teacher.cpu()
    torch.manual_seed(config.seed)

    train_config = config.train_config()
    if resume:
        result = resume_run(run_dir, callbacks=[callback])
    else:
        distributed.on_main_then_share(lambda: _start(run_dir, config, overwrite))
        # With a validation split train() reloads the data to hold it out; otherwise it uses ours.
        result = train(train_config, callbacks=[callback], data=None if config.val_size else data)
    run_dir = Path(result.run_dir)
    record = {
        "method": config.method, "config": config_to_dict(method), "teachers": list(config.teacher),
        "teacher_accuracy": teacher_accuracy, "student_accuracy": result.accuracy,
        "layers": [list(p) for p in getattr(callback, "pairs", [])],
        "connector_params": sum(p.numel() for p in callback.parameters()),
        "images_per_s": result.images_per_s,
    }
    entry = lineage_entry("distill", config={**train_config.model_dump(mode="json"), **record["config"]},
                          run=run_dir.name, source=config.teacher[0], teachers=list(config.teacher),
                          method=config.method, dataset=data.name, model=config.model, epochs=result.epochs,
                          accuracy=result.accuracy, teacher_accuracy=teacher_accuracy)
    if distributed.is_main():  # under torchrun, rank 0 alone writes the run (as train() did)
        lineage = [*source_lineage(read_checkpoint_meta(config.teacher[0]), config.teacher[0]), entry]
        update_checkpoint_meta(run_dir / "best.safetensors", lineage=lineage, distill=record)
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        # source_accuracy is the source checkpoint's own: with an ensemble, teacher_accuracy is that of
        # the averaged logits, which no single source file has
        single = len(config.teacher) == 1
        summary.update(kind="distill", source=config.teacher[0], source_accuracy=teacher_accuracy if single else None,
                       teacher_accuracy=teacher_accuracy, details=record)
        text = json.dumps(summary, indent=2) + "\n"
        atomic_write(summary_path, lambda tmp: Path(tmp).write_text(text))
    distributed.barrier()
    return result
