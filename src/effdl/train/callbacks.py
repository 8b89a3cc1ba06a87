"""Callbacks: how compression techniques hook into training without changing the trainer.

The protocol lives in the leaf layer (`effdl.core.hooks`), so techniques subclass `Callback` without
importing the trainer; it is re-exported here for code written against this module.
"""

from effdl.core.hooks import Callback, FeatureTap, TrainingState

__all__ = ["Callback", "FeatureTap", "TrainingState"]
