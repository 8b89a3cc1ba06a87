"""The job behind `effdl export`: a checkpoint (or model name) in, a verified ONNX file out.

`export_checkpoint(source, ExportOptions(...), out_path)` loads the model, writes a float graph or
(`int8=True`) an int8 QDQ graph (effdl.deploy.int8: a float model is BatchNorm-folded, quantized and
calibrated on training images first; a model quantized on uniform grids of at most 8 bits is
exported as it is), verifies it against PyTorch before it takes its name, and returns what
`effdl export --json` prints. Quantized models are checked on real training images (another draw
than calibration's) from the options' data or the checkpoint's dataset; float models on random
inputs unless data is named. torch is imported inside the functions, so importing the options
stays light.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effdl.console import say
from effdl.errors import EffdlError, unknown_name_error
from effdl.pipelines.sources import DataOptions, check_input_size, check_positive, load_source

if TYPE_CHECKING:
    import torch
    from torch import nn

CALIBRATION_METHODS = ("minmax", "percentile", "mse")
EXPORTER_NAMES = ("dynamo", "torchscript")  # the torch exporters; "auto" tries them in this order


@dataclass(kw_only=True)
class Int8Options(DataOptions):
    """int8 export and its calibration (shared by export and bench), plus the data they read."""

    int8: bool = False  # int8 QDQ graph instead of a float one
    calibration: str = "minmax"  # activation range calibration of a float model: minmax | percentile | mse
    calibration_images: int = 512  # training images a float model is calibrated on

    def validate_int8(self) -> None:
        if self.calibration not in CALIBRATION_METHODS:
            raise unknown_name_error("calibration method", self.calibration, CALIBRATION_METHODS)
        check_positive(self.calibration_images, "calibration_images")
        self.validate_data()


@dataclass(kw_only=True)
class ExportOptions(Int8Options):
    """What `effdl export` does; see `effdl export --help` for each option."""

    input_size: list[int] | None = None  # C,H,W; None: the model's own (its training data's)
    dynamic_batch: bool = True  # symbolic batch axis; False: batch 1
    opset: int | None = None  # None: the exporter's
    exporter: str = "auto"  # auto (dynamo, falling back to torchscript) | dynamo | torchscript
    evaluate: bool = False  # also measure the file's top-1 in ONNX Runtime on the test split

    def validate(self) -> None:
        """EffdlError (one line) for a value that cannot work."""
        self.validate_int8()
        check_input_size(self.input_size)
        check_positive(self.opset, "opset", optional=True, minimum=7)
        if self.exporter not in ("auto", *EXPORTER_NAMES):
            raise unknown_name_error("exporter", self.exporter, ("auto", *EXPORTER_NAMES))


def data_config(model: nn.Module, meta: dict) -> dict:
    """The checkpoint's run config, with the dataset its data record names when the config has none."""
    from effdl.models.registry import data_meta

    config = dict(meta.get("config") or {})
    if not config.get("dataset") and (data_meta(model) or {}).get("dataset"):
        config["dataset"] = data_meta(model)["dataset"]
    return config


def int8_export_model(model: nn.Module, meta: dict, options: Int8Options) -> nn.Module:
    """The int8 fake-quant model to export: `model` itself if already quantized (on grids int8 QDQ
    expresses, else EffdlError), else a BN-folded copy calibrated on the options' training images."""
    from effdl.compress.quantize import calibration_images, is_quantized
    from effdl.deploy.int8 import int8_model
    from effdl.measure.accuracy import check_model_fits_data

    images = None
    if not is_quantized(model):
        data = options.dataset(data_config(model, meta), model)
        check_model_fits_data(model, data)
        images = calibration_images(data, options.calibration_images)
        say(f"calibrating int8 ranges on {len(images):,} training images...")
    return int8_model(model.cpu().eval(), images, options.calibration)


def check_images(model: nn.Module, meta: dict, options: DataOptions) -> torch.Tensor | None:
    """Images to verify an export of `model` on, or None for random inputs.

    A quantized model is judged on real images (`CHECK_IMAGES` training images, another draw
    than calibration's) from `options.data` or the checkpoint's dataset; when none can be loaded,
    random inputs are used and the check's note says so. A float model is checked on random
    inputs unless `options.data` is given.
    """
    from effdl.compress.quantize import calibration_images
    from effdl.deploy.onnx import CHECK_IMAGES, rounds
    from effdl.measure.accuracy import check_model_fits_data

    if not (rounds(model) or options.data):
        return None
    try:
        data = options.dataset(data_config(model, meta), model)
    except EffdlError as exc:
        if options.data:
            raise
        say(f"note: no images to check the export on ({exc}); using random inputs")
        return None
    check_model_fits_data(model, data)  # a model of other classes, judged on these images, means nothing
    return calibration_images(data, min(CHECK_IMAGES, len(data.train_labels)), seed=1)


def export_model(model: nn.Module, meta: dict[str, Any], options: ExportOptions, out_path: str | Path) -> dict[str, Any]:
    """Export an already loaded `model` (with its checkpoint metadata `meta`, {} for none) as
    `export_checkpoint` does; returns the same dict."""
    from effdl.deploy.int8 import export_int8_verified, optimized_op_counts
    from effdl.deploy.onnx import export_verified, read_metadata, weight_storage

    options.validate()
    say(f"exporting {'int8 ' if options.int8 else ''}ONNX to {out_path}...")
    shape = tuple(options.input_size) if options.input_size else None
    settings = dict(input_size=shape, dynamic_batch=options.dynamic_batch, opset=options.opset,
                    exporter=options.exporter)
    if options.int8:
        model = int8_export_model(model, meta, options)
        path, check, _ = export_int8_verified(model, Path(out_path), check_images=check_images(model, meta, options),
                                              **settings)
    else:
        path, check = export_verified(model, Path(out_path), images=check_images(model, meta, options), **settings)
    metadata = read_metadata(path)
    result = {"onnx": str(path), "bytes": path.stat().st_size, "max_abs_diff": check.max_abs_diff,
              "input_size": metadata["input_size"], "exporter": metadata.get("exporter"), "int8": options.int8,
              "weights": weight_storage(path), "check": dataclasses.asdict(check)}
    if options.int8:
        ops = optimized_op_counts(path)
        result["integer_convs"] = ops.get("QLinearConv", 0)
        result["float_convs"] = ops.get("Conv", 0) + ops.get("FusedConv", 0)
        result["integer_adds"] = ops.get("QLinearAdd", 0)
        result["float_adds"] = ops.get("Add", 0) + ops.get("FusedConv+Add", 0)
    if options.evaluate:
        result.update(onnx_test_accuracy(path, model, meta, options))
    return result


def onnx_test_accuracy(path: Path, model: nn.Module, meta: dict[str, Any], options: DataOptions) -> dict[str, Any]:
    """The exported file's top-1 in ONNX Runtime on the test split of the model's data (the whole
    split unless `options.test_limit`): {"onnx_accuracy", "onnx_correct", "onnx_total"}."""
    from effdl.data import BatchLoader
    from effdl.measure.accuracy import check_model_fits_data, evaluate_onnx

    data = options.dataset(data_config(model, meta), model)
    check_model_fits_data(model, data)
    say(f"evaluating {path.name} in ONNX Runtime on {len(data.test_labels):,} test images...")
    accuracy = evaluate_onnx(path, BatchLoader.for_split(data, "test", batch_size=500))
    return {"onnx_accuracy": accuracy.top1, "onnx_correct": accuracy.correct, "onnx_total": accuracy.total}


def export_checkpoint(source: str | Path, options: ExportOptions, out_path: str | Path, *,
                      num_classes: int = 10) -> dict[str, Any]:
    """Export checkpoint or registered model name `source` to ONNX file `out_path`, verified.

    Returns {"onnx": path, "bytes", "max_abs_diff", "input_size": [C,H,W], "exporter", "int8",
    "weights" (the element type holding most weight values in the file: fp32, fp16, uint8 for an int8 graph (its integer codes, see effdl.deploy.int8)...),
    "check": the OnnxCheck as a dict (rule, agreement, max_steps in output-grid steps...)}, plus
    "integer_convs" / "float_convs" (convolutions ONNX Runtime runs as QLinearConv / in float) and
    "integer_adds" / "float_adds" (QLinearAdd / Add) with `options.int8`. `num_classes` sizes a model built from a name. Raises EffdlError for bad
    options, a missing checkpoint or dataset, data of other classes, a model int8 QDQ cannot
    express, or a file that fails the check (it is deleted; an existing file at `out_path` stays).
    """
    options.validate()
    model, meta = load_source(source, num_classes)
    return export_model(model, meta, options, out_path)
