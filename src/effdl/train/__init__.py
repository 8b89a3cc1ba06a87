"""Training: one trainer with callbacks, schedules, EMA, checkpoints and resumable runs."""

from typing import TYPE_CHECKING

from effdl.lazy import lazy_exports

# Imported on first use (effdl.lazy): TrainConfig alone needs no torch, for `effdl train --help`.
_EXPORTS = {
    "Callback": "effdl.train.callbacks",
    "NonFiniteLoss": "effdl.train.trainer",
    "TrainConfig": "effdl.train.config",
    "TrainResult": "effdl.train.trainer",
    "Trainer": "effdl.train.trainer",
    "make_config": "effdl.train.config",
    "reestimate_batchnorm": "effdl.train.batchnorm",
    "resume": "effdl.train.run",
    "train": "effdl.train.run",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from effdl.train.batchnorm import reestimate_batchnorm
    from effdl.train.callbacks import Callback
    from effdl.train.config import TrainConfig, make_config
    from effdl.train.run import resume, train
    from effdl.train.trainer import NonFiniteLoss, Trainer, TrainResult
