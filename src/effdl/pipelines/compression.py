"""What every "checkpoint in, compressed run out" pipeline does around its technique.

prune, factorize and quantize all: load the checkpoint and the data it was trained on (or the data
a command's flags chose), check they fit each other, measure the model the same way before and
after (accuracy on the test split, counts, imt2024 score, sparsity), re-estimate BatchNorm
statistics after a structural change, and fine-tune through the one FineTuner
(effdl.pipelines.finetune) configured from the technique's options.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from effdl.errors import EffdlError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from effdl.core.hooks import Callback
    from effdl.data import ImageDataset
    from effdl.measure.accuracy import Accuracy
    from effdl.pipelines.finetune import FineTuner
    from effdl.pipelines.run_dir import CompressedRun


def load_for_compression(
    checkpoint: str | Path, data: ImageDataset | None, *, train_limit: int | None, test_limit: int | None,
    seed: int = 0, data_root: str | None = None, verb: str = "compress",
) -> tuple[nn.Module, dict[str, Any], ImageDataset]:
    """(model, checkpoint metadata, dataset): `data` when given (limits applied), else the dataset the
    checkpoint records, loaded as the model saw it (size, resize policy, normalisation) with the
    class-balanced limits applied while loading, from `data_root` or the run's. The training limit
    defaults to the source run's (a model trained on a subset is fine-tuned on that subset); the
    test split is the whole one unless `test_limit`.

    Raises EffdlError for a missing or corrupt checkpoint, a quantized one (no technique here takes
    one: quantizing, pruning or factorizing happens before quantization; `verb` names the
    technique in the message), a checkpoint that names no dataset, or data whose classes or image
    size do not fit the model.
    """
    from effdl.checkpoint import load_model
    from effdl.compress.quantize import is_quantized
    from effdl.data import limited, load_dataset_for
    from effdl.measure.accuracy import check_model_fits_data
    from effdl.models.registry import data_meta
    from effdl.pipelines.sources import recorded_data_root

    model, meta = load_model(checkpoint)
    if is_quantized(model):
        raise EffdlError(f"{checkpoint} is already quantized; {verb} the float checkpoint instead"
                         + ("" if verb == "quantize" else f" ({verb} first, then quantize)"))
    train_config = meta.get("config") or {}
    if train_limit is None:
        train_limit = train_config.get("train_limit") or None
    if data is None:
        record = data_meta(model) or {"dataset": train_config.get("dataset")}
        if not record.get("dataset"):
            raise EffdlError("the checkpoint does not name its dataset: pass --data NAME")
        data = load_dataset_for(record, root=data_root or recorded_data_root(train_config), train_limit=train_limit,
                                test_limit=test_limit, limit_seed=seed)
    check_model_fits_data(model, data)
    return model, meta, limited(data, train_limit, test_limit, seed)


def technique_finetuner(
    data: ImageDataset, meta: dict[str, Any], options: Any, *, callbacks: list[Callback] | None = None,
    run: CompressedRun | None = None,
) -> FineTuner:
    """The FineTuner of compressed run `run` (None: nothing written): the source run's training
    config (`meta["config"]`) with what the technique's `options` set (epochs, lr, batch_size,
    compile, device, seed, train_limit (default: the source run's), test_limit; bf16 and data_root
    when the options have them); it continues the run's interrupted fine-tune when `run` resumes."""
    from effdl.pipelines.finetune import FineTuneOptions, FineTuner

    source_limit = (meta.get("config") or {}).get("train_limit") or None  # what load_for_compression applied
    tune = FineTuneOptions(
        epochs=options.epochs, lr=options.lr, batch_size=options.batch_size, compile=options.compile,
        device=options.device, seed=options.seed, test_limit=options.test_limit,
        train_limit=options.train_limit if options.train_limit is not None else source_limit,
        bf16=getattr(options, "bf16", None), data_root=getattr(options, "data_root", None),
    )
    run_dir = run.path if run is not None else None
    if getattr(options, "fine_tunes_once", lambda: True)():
        hint = (f"the fine-tune stopped; continue it with --resume --out {run_dir} (the same options), or start "
                "again with --overwrite")
    else:
        hint = (f"the fine-tune stopped; this method fine-tunes in several phases, which cannot resume: start it "
                f"again with --overwrite --out {run_dir}")
    return FineTuner(data, meta.get("config") or {}, meta["spec"]["name"], tune, callbacks=callbacks, run_dir=run_dir,
                     resume_hint=hint,
                     model_kwargs=meta["spec"].get("kwargs"), resume_from=run.resume_from if run is not None else None)


def test_accuracy(model: nn.Module, data: ImageDataset, device: torch.device) -> Accuracy:
    """Top-1 of `model` on `data`'s test split (as loaded: the whole split unless limited)."""
    from effdl.data import BatchLoader
    from effdl.measure.accuracy import evaluate

    return evaluate(model, BatchLoader.for_split(data, "test", batch_size=500, device=device))


def training_batches(data: ImageDataset, batches: int, device: torch.device, batch_size: int = 64) -> list[torch.Tensor]:
    """The first `batches` (at least 1) augmented training batches' images, for calibration."""
    from effdl.data import BatchLoader

    loader = BatchLoader.for_split(data, "train", batch_size=batch_size, device=device)
    return [images for _, (images, _) in zip(range(max(1, batches)), loader)]


def reestimate_and_evaluate(model: nn.Module, data: ImageDataset, device: torch.device, batches: int = 8) -> Accuracy:
    """Re-estimate BatchNorm statistics on training batches (removing channels, zeroing weights or
    factorizing layers leaves them stale); returns the test accuracy after it, the accuracy before
    fine-tuning."""
    from effdl.train import reestimate_batchnorm

    reestimate_batchnorm(model, training_batches(data, batches, device))
    return test_accuracy(model, data, device)


def measure_compressed(model: nn.Module, data: ImageDataset, device: torch.device,
                       accuracy: Accuracy | None = None) -> dict[str, Any]:
    """Accuracy, counts, size, imt2024 score and sparsity of `model`, all read from the model itself
    (`accuracy`: its test accuracy when already measured)."""
    from effdl.compress.prune.unstructured import measure_sparsity
    from effdl.measure.counting import profile
    from effdl.measure.scoring import score

    prof = profile(model, (1, *data.image_shape))
    accuracy = accuracy or test_accuracy(model.to(device), data, device)
    try:
        imt2024 = score(prof, "imt2024").score
    except EffdlError:  # a model the rule cannot score (no conv or linear layer)
        imt2024 = None
    return {"accuracy": accuracy.top1, "correct": accuracy.correct, "total": accuracy.total, "loss": accuracy.loss,
            "macs": prof.macs, "params": prof.params, "size_bytes": prof.size_bytes, "score_imt2024": imt2024,
            "sparsity": measure_sparsity(model).sparsity}
