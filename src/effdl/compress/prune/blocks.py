"""Block (depth) pruning: remove whole residual blocks whose shortcut is the identity.

A residual block computes y = x + f(x) (then perhaps a ReLU, which leaves the non-negative x of a
ReLU network unchanged); replacing it by the identity keeps every shape, so the network loses the
block's MACs, parameters and, what channel pruning cannot remove, its operators. At batch 1 a small
CNN's latency is bound by per-operator cost as much as by arithmetic (in ONNX Runtime an int8
convolution with fewer than 16 output channels is no faster than one with 16), so removing layers
lowers latency where thinner layers do not: Elkerdawy et al., "To filter prune, or to layer prune,
that is the question" (ACCV 2020); Chen & Zhao, "Shallowing deep networks" (TPAMI 2019).

Candidates are the blocks with an identity shortcut, recognised by how effdl and torchvision write
them (`use_residual` / `use_res_connect` true; `shortcut` None, nn.Identity or an empty
nn.Sequential; `downsample` None on a block with convolutions), then checked on an example input:
called once, output shape equal to input shape. Criterion: output distortion, the mean KL
divergence between the model's class probabilities with and without the block alone, on
calibration inputs (no labels needed); the least disruptive blocks go first. The removal is recorded
(`remove_blocks`) so a checkpoint rebuilds the shallower architecture.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from effdl.core.edits import record_transform, register_transform
from effdl.core.modules import eval_mode, input_shapes, replace_submodule
from effdl.core.selection import match_patterns
from effdl.errors import EffdlError
from effdl.measure.counting import profile
from effdl.models.registry import example_input_shape

TRANSFORM = "remove_blocks"


def _has_identity_shortcut(module: nn.Module) -> bool:
    for flag in ("use_residual", "use_res_connect"):  # effdl MobileNets / torchvision InvertedResidual
        if getattr(module, flag, None) is True:
            return True
    if hasattr(module, "shortcut"):  # effdl ResNets, PreAct, ResNeXt, GhostNet
        shortcut = module.shortcut
        return shortcut is None or isinstance(shortcut, nn.Identity) or (
            isinstance(shortcut, nn.Sequential) and len(shortcut) == 0)
    if hasattr(module, "downsample"):  # torchvision BasicBlock / Bottleneck
        has_conv = any(isinstance(m, nn.Conv2d) for m in module.children())
        return module.downsample is None and has_conv
    return False


def removable_blocks(model: nn.Module, example_inputs: torch.Tensor | None = None) -> list[str]:
    """Names of the residual blocks of `model` that have an identity shortcut, in module order.

    Each is checked on `example_inputs` (default: one random input of the model's size): called
    exactly once, with an output of the input's shape. Blocks already removed are gone from the
    model and so from the list. A block may hold others (both are listed); `prune_blocks` never
    removes one nested in another it removes.
    """
    named = [(n, m) for n, m in model.named_modules() if n and _has_identity_shortcut(m)]
    if not named:
        return []
    if example_inputs is None:
        example_inputs = torch.randn(example_input_shape(model), device=next(model.parameters()).device)
    seen: dict[str, list[bool]] = {n: [] for n, _ in named}

    def watch(name: str):
        def hook(module, args, output):
            same = bool(args) and torch.is_tensor(args[0]) and torch.is_tensor(output) and args[0].shape == output.shape
            seen[name].append(same)
        return hook

    handles = [m.register_forward_hook(watch(n)) for n, m in named]
    try:
        with eval_mode(model), torch.no_grad():
            model(example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return [n for n, _ in named if seen[n] == [True]]


@dataclass
class PrunedBlocks:
    """What `prune_blocks` did: `removed` block names (in module order), `distortion` {candidate:
    mean KL divergence in nats when that block alone is removed}, `macs_before` / `macs_after`."""

    removed: list[str] = field(default_factory=list)
    distortion: dict[str, float] = field(default_factory=dict)
    macs_before: int = 0
    macs_after: int = 0


def block_distortion(
    model: nn.Module, blocks: list[str], batches: Iterable[torch.Tensor]
) -> dict[str, float]:
    """{block: mean KL(p_model || p_without_block)} in nats over the images of `batches` (inputs as
    the model takes them), each block removed alone, in eval mode; the model is left unchanged."""
    device = next(model.parameters()).device
    batches = [x.to(device) for x in batches]
    if not batches:
        raise EffdlError("block pruning needs at least one calibration batch")
    scores: dict[str, float] = {}
    with eval_mode(model), torch.no_grad():
        reference = [F.log_softmax(model(x).float(), dim=1) for x in batches]
        for name in blocks:
            block = model.get_submodule(name)
            replace_submodule(model, name, nn.Identity())
            try:
                total = sum(F.kl_div(F.log_softmax(model(x).float(), dim=1), ref, log_target=True,
                                     reduction="sum").item() for x, ref in zip(batches, reference))
            finally:
                replace_submodule(model, name, block)
            scores[name] = total / sum(len(x) for x in batches)
    return scores


def check_block_amount(blocks: Any, target_macs: Any) -> tuple[int | None, float | None]:
    """(blocks, target_macs) as `prune_blocks` takes them: exactly one given, blocks a whole number >= 1
    (numpy integers too), target_macs a number in (0, 1). Raises EffdlError naming the bad value."""
    if (blocks is None) == (target_macs is None):
        raise EffdlError("block pruning takes exactly one of blocks (how many) and target_macs")
    if blocks is not None:
        if not isinstance(blocks, bool) and hasattr(blocks, "__index__"):
            blocks = operator.index(blocks)
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
            raise EffdlError(f"blocks must be a whole number >= 1, got {blocks!r}")
    if target_macs is not None:
        if isinstance(target_macs, bool) or not isinstance(target_macs, numbers.Real):
            raise EffdlError(f"target_macs must be a number in (0, 1), got {target_macs!r}")
        if not 0.0 < target_macs < 1.0:
            raise EffdlError(f"the MAC fraction to keep must be in (0, 1), got {target_macs}")
    return blocks, target_macs


def prune_blocks(
    model: nn.Module,
    *,
    blocks: int | None = None,
    target_macs: float | None = None,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    calibration: Iterable[torch.Tensor] | None = None,
    example_inputs: torch.Tensor | None = None,
) -> PrunedBlocks:
    """Remove residual blocks from `model` in place, least disruptive first; returns `PrunedBlocks`.

    Give `blocks` (how many to remove) or `target_macs` (remove until the MACs are at most this
    fraction of the original, in (0, 1)). `include` / `exclude`: names or globs restricting the
    candidates (the blocks `removable_blocks` finds); each must match one of them. `calibration`:
    input batches (N, C, H, W) ranking the blocks by output distortion (`block_distortion`); a tensor
    is one batch, (inputs, labels) pairs give their inputs; without them, random inputs of
    `example_inputs`' shape rank them, which says little: pass real images. Raises EffdlError, with the model unchanged, when
    the model has no such block, when more blocks are asked than there are, or when the MAC target
    cannot be reached by removing them all.
    """
    blocks, target_macs = check_block_amount(blocks, target_macs)
    device = next(model.parameters()).device
    shape = example_input_shape(model, (1, *example_inputs.shape[1:]) if example_inputs is not None else None)
    if example_inputs is None:
        example_inputs = torch.randn(shape, device=device)
    found = removable_blocks(model, example_inputs)
    if not found:
        raise EffdlError(f"{type(model).__name__} has no residual block with an identity shortcut to remove")
    include = (include,) if isinstance(include, str) else tuple(include)
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    every = found
    try:
        if include:
            chosen = match_patterns(found, include, what="removable block")
            found = [n for n in found if n in chosen]
        if exclude:
            dropped = match_patterns(found, exclude, what="removable block")
            found = [n for n in found if n not in dropped]
    except EffdlError as exc:
        raise EffdlError(f"{exc} (removable: blocks with an identity shortcut that keep their input's shape; "
                         f"{type(model).__name__} has {', '.join(every)})") from None
    if not found:
        raise EffdlError("include / exclude leave no block to remove")
    if blocks is not None and blocks > len(found):
        among = f"{type(model).__name__} has" if len(found) == len(every) else "include / exclude leave"
        raise EffdlError(f"asked to remove {blocks} blocks; {among} {len(found)} removable: {', '.join(found)}")
    batches = _input_batches(calibration) if calibration is not None else [torch.randn(64, *shape[1:], device=device)]
    distortion = block_distortion(model, found, batches)
    order = sorted(found, key=lambda n: distortion[n])
    macs_before = profile(model, shape).macs
    block_macs = {name: profile(model.get_submodule(name), input_shape).macs
                  for name, input_shape in input_shapes(model, found, example_inputs).items()}
    removed: list[str] = []
    macs = macs_before
    for name in order:  # a block nested in a removed one (or holding one) is no longer a choice
        if (len(removed) == blocks if blocks is not None else macs <= target_macs * macs_before):
            break
        if not any(_nested(name, other) for other in removed):
            removed.append(name)
            macs -= block_macs[name]
    if blocks is not None and len(removed) < blocks:
        raise EffdlError(f"asked to remove {blocks} blocks; only {len(removed)} can go together (the other candidates "
                         f"hold or sit in them): {', '.join(sorted(removed, key=found.index))}")
    if target_macs is not None and macs > target_macs * macs_before:
        raise EffdlError(f"removing every candidate block keeps {macs / macs_before:.2f}x of the MACs, "
                         f"above the {target_macs} target; combine with channel pruning")
    removed.sort(key=found.index)
    remove_blocks(model, removed)
    record_transform(model, TRANSFORM, {"blocks": removed})
    return PrunedBlocks(removed, distortion, macs_before, profile(model, shape).macs)


def _input_batches(calibration: Iterable[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    """Calibration as a list of input batches: one tensor is one batch; (inputs, labels) pairs, as a
    DataLoader yields them, give their inputs."""
    if torch.is_tensor(calibration):
        return [calibration]
    batches = []
    for item in calibration:
        batch = item[0] if isinstance(item, (tuple, list)) else item
        if not torch.is_tensor(batch):
            raise EffdlError(f"calibration batches must be input tensors (N, C, H, W), got {type(batch).__name__}")
        batches.append(batch)
    return batches


def _nested(name: str, other: str) -> bool:
    return name.startswith(other + ".") or other.startswith(name + ".")


@register_transform(TRANSFORM)
def remove_blocks(model: nn.Module, blocks: list[str]) -> nn.Module:
    """Replace each named block of `model` by nn.Identity (also the replay of a saved removal)."""
    for name in blocks:  # every name first: a bad record leaves the model whole
        try:
            model.get_submodule(name)
        except AttributeError:
            raise EffdlError(f"the checkpoint removes block '{name}', which the architecture lacks") from None
    for name in blocks:
        replace_submodule(model, name, nn.Identity())
    return model
