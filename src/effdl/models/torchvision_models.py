"""torchvision classification models as `tv:NAME` (e.g. tv:resnet18, tv:mobilenet_v2).

They are built untrained (`weights=None`: nothing is ever downloaded) with the requested number of
classes. They keep their ImageNet layout (strided stem, max-pool), so on 32x32 inputs they are
much less accurate than the CIFAR variants of the registry; some (e.g. inception_v3) need larger
inputs altogether.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torchvision
from torch import nn

from effdl.errors import EffdlError, unknown_name_error


def torchvision_names() -> list[str]:
    """Names of torchvision's image classification models (no detection/segmentation/video)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def torchvision_factory(name: str) -> Callable[..., nn.Module]:
    """A factory `(num_classes=10, **kwargs) -> nn.Module` for torchvision model `name`."""
    known = torchvision_names()
    if name not in known:
        # Suggest with the prefix, as the user typed it.
        raise unknown_name_error("model", f"tv:{name}", [f"tv:{n}" for n in known])

    def factory(num_classes: int = 10, **kwargs: Any) -> nn.Module:
        if "weights" in kwargs:
            raise EffdlError("tv: models are built untrained; pretrained weights are not supported")
        try:
            return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        except (TypeError, ValueError) as exc:
            raise EffdlError(f"cannot build torchvision model '{name}' with {kwargs}: {exc}") from None

    factory.__name__ = name
    factory.__doc__ = f"torchvision {name} (untrained)."
    return factory
