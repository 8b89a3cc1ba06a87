"""Training: one trainer with callbacks, schedules, EMA, checkpoints and resumable runs."""

from effdl.train.batchnorm import reestimate_batchnorm
from effdl.train.callbacks import Callback
from effdl.train.config import TrainConfig, make_config
from effdl.train.run import resume, train
from effdl.train.trainer import NonFiniteLoss, Trainer, TrainResult

__all__ = ["Callback", "NonFiniteLoss", "TrainConfig", "TrainResult", "Trainer", "make_config",
           "reestimate_batchnorm", "resume", "train"]
