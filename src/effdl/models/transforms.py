"""Structural edits recorded on a model: now in the leaf layer, `effdl.core.edits`; re-exported here
for code written against this module."""

from effdl.core.edits import model_transforms, record_transform, register_transform, replay_transforms

__all__ = ["model_transforms", "record_transform", "register_transform", "replay_transforms"]
