"""A listing of the model zoo: every registered name with its family, options and size."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from effdl.models.registry import create_model, list_models, model_factory


PARAMETERS_COUNTED = ("every nn.Parameter element once: conv/linear weights and biases and BatchNorm affine; "
                      "buffers (BatchNorm running statistics) not counted")


def count_parameters(model: torch.nn.Module) -> int:
    """The one parameter count of effdl (`effdl models`, `effdl info`, `effdl score`, and
    `ModelProfile.params`): see PARAMETERS_COUNTED. A parameter shared by several layers counts once."""
    return sum(p.numel() for p in model.parameters())


def describe_models(num_classes: int = 10) -> list[dict[str, Any]]:
    """One entry per registered model: name, family, summary, options (with defaults) and params.

    Models are built on the meta device (shapes only, no memory, no initialisation work), so the
    whole listing takes a few seconds even with WRN-28-10 in it.
    """
    rows = []
    for name in list_models():
        factory = model_factory(name)
        options = {
            key: p.default
            for key, p in inspect.signature(factory).parameters.items()
            if key != "num_classes" and p.default is not inspect.Parameter.empty
        }
        with torch.device("meta"):
            model = create_model(name, num_classes=num_classes)
        rows.append({
            "name": name,
            "family": factory.__module__.rsplit(".", 1)[-1],
            "summary": (inspect.getdoc(factory) or "").split("\n")[0],
            "options": options,
            "params": count_parameters(model),
        })
    return rows
