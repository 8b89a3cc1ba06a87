"""Small helpers over modules that several layers need: swap a submodule by its dotted name, run
a model in eval mode without losing its training flag, and list the tensors of a model's output."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from effdl.errors import EffdlError


def replace_submodule(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put `new` where `model.get_submodule(name)` is (a dotted path from `named_modules()`, e.g.
    `layers.1.0.conv1`, or `0` inside an nn.Sequential) and return the module it replaced.

    Raises EffdlError if `name` is empty (the model itself cannot be replaced in place) or names no
    submodule of `model`.
    """
    if not name:
        raise EffdlError("replace_submodule needs a submodule's name; the model itself cannot be replaced in place")
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
        old = parent.get_submodule(child)
    except AttributeError:
        raise EffdlError(f"{type(model).__name__} has no submodule '{name}'") from None
    setattr(parent, child, new)  # nn.Module.__setattr__ (and Sequential/ModuleList) accept numeric names
    return old


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode for the `with` block, then restore the training flag it had, even if
    the block raises. Only the top-level flag is saved: submodules come back as `model.train(flag)`
    sets them (which is how every effdl model is used)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def output_leaves(output: Any) -> list[torch.Tensor]:
    """The tensors of a model's output (a tensor, tuple, list or dict of them), in the order the
    ONNX exporters write the graph's outputs (torch.utils._pytree's flattening order)."""
    return [leaf for leaf in pytree.tree_flatten(output)[0] if isinstance(leaf, torch.Tensor)]


def input_shapes(model: nn.Module, names: Sequence[str], example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """{name: the batch-1 shape of the input the named submodule receives}, from one forward pass of
    `example` (its first item, eval mode, no autograd); a submodule called twice keeps its first input."""
    shapes: dict[str, tuple[int, ...]] = {}

    def keep(name: str):
        def hook(module: nn.Module, args: tuple) -> None:  # None: a pre-hook's value would replace the input
            shapes.setdefault(name, (1, *args[0].shape[1:]))
        return hook

    handles = [model.get_submodule(name).register_forward_pre_hook(keep(name)) for name in names]
    try:
        with eval_mode(model), torch.no_grad():
            model(example[:1])
    finally:
        for handle in handles:
            handle.remove()
    return shapes
