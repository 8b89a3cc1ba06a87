"""The leaf layer: what every other effdl layer may share, importing only torch, the standard library
and `effdl.errors`.

- `edits`: the record of structural edits a checkpoint replays (each names the effdl module owning
  its replay, imported on demand from an allow-list).
- `hooks`: the training-hook protocol (`Callback`) and `FeatureTap`, to read activations by path.
- `selection`: `LayerSelection`, the one way to say which layers a technique or command touches.
- `modules`: small helpers over modules (`replace_submodule`, `eval_mode`, `input_shapes`).
- `registry`: `Registry`, a name -> entry table filled by a decorator (criteria, quantizer kinds).
- `configs`: technique configs as versioned data (`technique_config`, `config_to_dict`,
  `config_from_dict`) and one handler per config type (`register_handler`, `dispatch`).

A test (tests/test_layers.py) keeps this package free of any other effdl import.
"""

from effdl.core.configs import config_from_dict, config_to_dict, dispatch, register_handler, technique_config
from effdl.core.edits import model_transforms, record_transform, register_transform, replay_transforms
from effdl.core.hooks import Callback, FeatureTap, TrainingState
from effdl.core.modules import eval_mode, input_shapes, replace_submodule
from effdl.core.registry import Registry
from effdl.core.selection import LayerSelection, match_patterns

__all__ = [
    "Callback",
    "FeatureTap",
    "LayerSelection",
    "Registry",
    "TrainingState",
    "config_from_dict",
    "config_to_dict",
    "dispatch",
    "eval_mode",
    "input_shapes",
    "match_patterns",
    "model_transforms",
    "record_transform",
    "register_handler",
    "register_transform",
    "replace_submodule",
    "replay_transforms",
    "technique_config",
]
