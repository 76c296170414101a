"""Augmentation shared by both tasks: MONAI's Rand* dictionary transforms built from an ``AugmentationConfig``."""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai import transforms as mt

from medseg_attn.config import AugmentationConfig

__all__ = ["augmentation"]


def augmentation(aug: AugmentationConfig, spatial_dims: int, keys: Sequence[str] = ("image", "label")
                 ) -> list[mt.Transform]:
    """Spatial and intensity augmentation of image(/label) patches (MONAI's Rand* dictionary transforms).

    ``keys`` are 'image' and optionally 'label' (classification augments the image alone).
    """
    if not aug.enabled:
        return []
    keys = list(keys)
    modes = ("bilinear", "nearest")[: len(keys)]
    radians = math.radians(aug.rotate_degrees)
    rotate = (radians,) * (3 if spatial_dims == 3 else 1)
    chain: list[mt.Transform] = [
        mt.RandAffined(keys, prob=aug.affine_probability, rotate_range=rotate, scale_range=(aug.scale,) * spatial_dims,
                       mode=modes, padding_mode="zeros"),
    ]
    for axis in aug.flip_axes:
        chain.append(mt.RandFlipd(keys, prob=0.5, spatial_axis=axis))
    p = aug.intensity_probability
    chain += [
        mt.RandGaussianNoised("image", prob=p, std=aug.noise_std),
        mt.RandScaleIntensityd("image", factors=0.1, prob=p),
        mt.RandShiftIntensityd("image", offsets=0.1, prob=p),
        mt.RandAdjustContrastd("image", prob=p, gamma=(0.7, 1.5)),
        mt.RandGaussianSmoothd("image", prob=p, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
    ]
    return chain
