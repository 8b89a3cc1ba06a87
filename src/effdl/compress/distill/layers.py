"""Which student layer learns from which teacher layer: module paths, and stage pairs proposed by size.

Layers are named by their path in `named_modules()`, for effdl's models and torchvision's alike
(`layers.1` in a CIFAR ResNet, `layer3` in tv:resnet18, `features.6` in a MobileNet). A pair is
written "student.path=teacher.path". `propose_stage_pairs` runs one forward pass of each model
with a `FeatureTap` on every module and pairs the last stage of each spatial resolution the two
models share, so nobody has to read an architecture to distill from it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from effdl.core.hooks import FeatureTap
from effdl.core.modules import eval_mode
from effdl.errors import EffdlError
from effdl.models.registry import model_input_size

# Activations whose *input* is the pre-activation feature the overhaul method distills.
RELU_TYPES = (nn.ReLU, nn.ReLU6)


def bare_module(model: nn.Module) -> nn.Module:
    """The module a training wrapper holds (torch.compile's `_orig_mod`, DataParallel/DDP's
    `module`), so paths are the model's own whatever wraps it."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def check_paths(model: nn.Module, paths: Iterable[str], role: str) -> None:
    """Raise EffdlError for the first path that is not a submodule of `model`, listing close names."""
    names = [n for n, _ in bare_module(model).named_modules() if n]
    known = set(names)
    for path in paths:
        if path not in known:
            close = difflib.get_close_matches(path, names, n=4, cutoff=0.4)
            hint = f"; close names: {', '.join(close)}" if close else f"; its stages include: {', '.join(names[:6])}"
            raise EffdlError(f"the {role} ({type(bare_module(model)).__name__}) has no layer '{path}'{hint}")


def parse_layer_pairs(specs: Iterable[str]) -> list[tuple[str, str]]:
    """["s.path=t.path", ...] -> [("s.path", "t.path"), ...]; a bare "path" pairs a layer with the
    same path in the teacher. Raises EffdlError for an empty side or more than one '='."""
    pairs = []
    for spec in specs:
        parts = [p.strip() for p in str(spec).split("=")]
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2 or not all(parts):
            raise EffdlError(f"a layer pair is STUDENT_PATH=TEACHER_PATH (e.g. layers.1=layers.1), got '{spec}'")
        pairs.append((parts[0], parts[1]))
    return pairs


def _probe(model: nn.Module, input_size: Sequence[int] | None) -> dict[str, object]:
    """Every submodule's output on one zero batch of 2 images, in the order modules first finish
    (outputs kept as the very objects returned, so modules passing one tensor on can be told apart)."""
    return _probe_with_inputs(model, input_size)[0]


def _probe_with_inputs(model: nn.Module, input_size: Sequence[int] | None
                       ) -> tuple[dict[str, object], dict[str, object]]:
    """`_probe`'s outputs, and each module's first positional input (the object itself)."""
    model = bare_module(model)
    size = tuple(input_size) if input_size is not None else model_input_size(model)
    names = [n for n, _ in model.named_modules() if n]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs: dict[str, object] = {}
    handles = []
    for name, module in model.named_modules():
        if name:
            def keep(mod: nn.Module, args: tuple, name: str = name) -> None:
                inputs[name] = args[0] if args else None
            handles.append(module.register_forward_pre_hook(keep))
    try:
        with torch.no_grad(), eval_mode(model), FeatureTap(model, names) as features:
            model(torch.zeros(2, *size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return dict(features), inputs


def feature_shapes(model: nn.Module, paths: Sequence[str], input_size: Sequence[int] | None = None
                   ) -> list[tuple[int, ...]]:
    """The shapes of the features at `paths` for a batch of 2 images of `input_size` (default the
    model's own). A ReLU's input (the overhaul method's pre-activation feature) has its output's shape."""
    check_paths(model, paths, "model")
    features = _probe(model, input_size)
    shapes = []
    for path in paths:
        value = features.get(path)
        if not isinstance(value, torch.Tensor):
            raise EffdlError(f"layer '{path}' of {type(bare_module(model)).__name__} did not return one tensor "
                             "in a forward pass; name a layer that does")
        shapes.append(tuple(value.shape))
    return shapes


def stage_outputs(model: nn.Module, input_size: Sequence[int] | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """The model's stages: for each spatial resolution of its [N, C, H, W] features (larger than
    1x1), in forward order, the module that ends it, with its output shape [2, C, H, W].

    A stage is the last module whose output has that resolution, named by the outermost module
    returning that very tensor whose submodules all work at that resolution (`layers.1` rather
    than `layers.1.2.relu2`, and not the whole `layers`). Parts of a block that changes resolution
    (a MobileNet block's expansion convolution before its strided one) are not stage ends: the
    block before it is.
    """
    features, inputs = _probe_with_inputs(model, input_size)
    tensors = {n: v for n, v in features.items() if isinstance(v, torch.Tensor)}

    def size(value: torch.Tensor) -> tuple[int, ...]:
        return tuple(value.shape[-2:]) if value.ndim == 4 else ()

    def sizes_within(name: str) -> set[tuple[int, ...]]:
        return {size(v) for n, v in tensors.items() if (n == name or n.startswith(name + ".")) and v.ndim == 4}

    # A stage ends where a one-step transition (a module from resolution r to another, with nothing
    # else inside it: a strided block, a pooling) takes its input; the outermost such consumer wins,
    # so a block's own expansion convolution before its strided one never counts as a stage end.
    ends: dict[tuple[int, ...], tuple[int, int, torch.Tensor]] = {}  # size -> (depth, order, tensor)
    for order, (name, value) in enumerate(tensors.items()):
        given = inputs.get(name)
        if not isinstance(given, torch.Tensor) or given.ndim != 4 or value.ndim not in (2, 4):
            continue
        before, after = size(given), size(value) if value.ndim == 4 else (1, 1)
        if before == after or before[0] * before[1] <= 1 or not sizes_within(name) <= {before, after}:
            continue
        depth = name.count(".")
        best = ends.get(before)
        if best is None or depth < best[0] or (depth == best[0] and order > best[1]):
            ends[before] = (depth, order, given)

    def uniform(name: str) -> bool:
        return sizes_within(name) == {size(tensors[name])}

    stages = []
    for _, _, tensor in sorted(ends.values(), key=lambda e: -e[2].shape[-1] * e[2].shape[-2]):
        same = [n for n, v in tensors.items() if v is tensor]
        if not same:  # the model's own input (a transition right at the start): nothing to distill
            continue
        # the outermost name; among equals the last (the in-place ReLU after a BatchNorm, not the BatchNorm)
        ranked = [(n.count("."), -i, n) for i, n in enumerate(same) if uniform(n)]
        chosen = min(ranked)[2] if ranked else same[-1]
        stages.append((chosen, tuple(tensor.shape)))
    return stages


def pre_activation_path(model: nn.Module, path: str, input_size: Sequence[int] | None = None) -> str:
    """The ReLU inside `path` whose output is `path`'s output (its input is the pre-ReLU feature the
    overhaul method needs), or `path` itself when its output comes from no ReLU (a linear bottleneck)."""
    model = bare_module(model)
    module = model.get_submodule(path)
    if isinstance(module, RELU_TYPES):
        return path
    features = _probe(model, input_size)
    out = features.get(path)
    for name, sub in module.named_modules(prefix=path):
        if isinstance(sub, RELU_TYPES) and features.get(name) is out:
            return name
    return path


def propose_stage_pairs(
    student: nn.Module, teacher: nn.Module, input_size: Sequence[int] | None = None
) -> list[tuple[str, str]]:
    """Student/teacher stage pairs with the same spatial size (see `stage_outputs`), in forward order.

    When the two share no resolution, the last stages of each are paired in order (connectors
    resize them). Raises EffdlError when either model has no [N, C, H, W] stage larger than 1x1.
    `input_size` (C, H, W) defaults to each model's own.
    """
    s_stages, t_stages = stage_outputs(student, input_size), stage_outputs(teacher, input_size)
    if not s_stages or not t_stages:
        who = "student" if not s_stages else "teacher"
        raise EffdlError(f"the {who} has no convolutional stage to distill from; name layers explicitly")
    t_by_size = {tuple(shape[-2:]): name for name, shape in t_stages}
    pairs = [(name, t_by_size[tuple(shape[-2:])]) for name, shape in s_stages if tuple(shape[-2:]) in t_by_size]
    if not pairs:
        count = min(len(s_stages), len(t_stages))
        pairs = [(s[0], t[0]) for s, t in zip(s_stages[-count:], t_stages[-count:])]
    return pairs
