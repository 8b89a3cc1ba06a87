"""The training augmentation settings (a pydantic model, no torch): importable by `effdl train --help`
and config files without loading torch. The augmentations themselves are in effdl.data.augment."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

AutoAugmentName = Literal["none", "autoaugment", "randaugment", "trivialaugment"]


class AugmentConfig(BaseModel):
    """Training-time augmentation. Evaluation batches are never augmented."""

    model_config = ConfigDict(extra="forbid")

    crop_padding: int = Field(4, ge=0, description="random crop after zero padding by this many pixels; 0 disables")
    flip: bool = Field(True, description="random horizontal flip")
    auto_augment: AutoAugmentName = Field(
        "none", description="torchvision policy: none, autoaugment (CIFAR-10 policy), randaugment, trivialaugment"
    )
    auto_augment_chunk: int = Field(8, ge=1, description="images sharing one random policy draw")
    cutout: int = Field(0, ge=0, description="side of the square Cutout erases, centred anywhere; 0 disables")
    mixup_alpha: float = Field(0.0, ge=0, description="mixup weight ~ Beta(alpha, alpha); 0 disables")
    cutmix_alpha: float = Field(0.0, ge=0, description="CutMix box area ~ Beta(alpha, alpha); 0 disables")
    mix_prob: float = Field(
        1.0, ge=0, le=1, description="probability that a batch is mixed (mixup or CutMix, 50/50 if both)"
    )
    mix_until_epoch: int | None = Field(None, ge=0, description="no mixing from this epoch on")

    @property
    def mixes(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0
