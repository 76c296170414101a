"""Augmentation shared by both tasks: MONAI's Rand* dictionary transforms built from an ``AugmentationConfig``.

The chain covers the variation between scanners and sites (strengths in :class:`AugmentationConfig`, documented
in docs/preprocessing.md): rotation and scaling, mirroring, an MR bias field, Gaussian noise and blur,
brightness, contrast, simulated low resolution, gamma (also on the inverted image), and for segmentation random
background masking (everything outside a dilated label mask set to the background value, as skull-stripping or
masking leaves a scan). With a ``background`` value the intensity transforms leave the voxels that hold it
untouched, so the background stays the one defined value the preprocessing gave it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from monai import transforms as mt
from scipy import ndimage

from medseg_attn.config import AugmentationConfig

__all__ = ["RandBackgroundMaskd", "RandBiasAboveFloord", "RandGaussianNoiseFastd", "augmentation"]

_BACKGROUND_KEY = "_background"


class RandBackgroundMaskd(mt.RandomizableTransform, mt.MapTransform):
    """With probability ``prob``, set every image voxel farther than a random 1..``max_dilation`` voxels from
    the labelled foreground to ``value`` (simulates skull-stripped, masked or defaced inputs)."""

    def __init__(self, image_key: str, label_key: str, value: float, prob: float = 0.15,
                 max_dilation: int = 4) -> None:
        mt.MapTransform.__init__(self, [image_key])
        mt.RandomizableTransform.__init__(self, prob)
        self.image_key, self.label_key, self.value, self.max_dilation = image_key, label_key, value, max_dilation
        self._dilation = 1

    def randomize(self, data: dict | None = None) -> None:
        super().randomize(None)
        self._dilation = int(self.R.randint(1, self.max_dilation + 1))

    def __call__(self, data: dict) -> dict:
        self.randomize()
        if not self._do_transform:
            return data
        label = np.asarray(torch.as_tensor(data[self.label_key]).cpu())[0] > 0  # (*S)
        if not label.any():
            return data
        keep = ndimage.binary_dilation(label, iterations=self._dilation)
        data = dict(data)
        image = data[self.image_key].clone()
        image[:, ~torch.from_numpy(keep)] = self.value
        data[self.image_key] = image
        return data


class RandBiasAboveFloord(mt.RandomizableTransform, mt.MapTransform):
    """An MR bias field as a scanner makes it, on an already normalised image.

    A coil's bias multiplies the *signal*, which is zero where a raw scan is darkest; on a z-scored image that zero
    sits below every tissue value, so multiplying the normalised values (as MONAI's ``RandBiasFieldd`` does) darkens
    dark tissue where it should brighten it. Here, per channel, the image is shifted so the foreground's 0.5th
    percentile (about the raw zero) is 0, multiplied by a smooth field (MONAI's ``RandBiasField``: Legendre
    polynomials of ``degree``, coefficients in [0, ``coefficient``]), shifted back and rescaled to the foreground's
    mean and standard deviation before, as normalising the biased scan would. Voxels marked as background keep
    their value.
    """

    def __init__(self, key: str, prob: float = 0.3, coefficient: float = 0.06, degree: int = 3) -> None:
        mt.MapTransform.__init__(self, [key])
        mt.RandomizableTransform.__init__(self, prob)
        self.key = key
        self.field = mt.RandBiasField(degree=degree, coeff_range=(0.0, coefficient), prob=1.0)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None
                         ) -> RandBiasAboveFloord:
        super().set_random_state(seed, state)
        self.field.set_random_state(seed, state)
        return self

    def draw_field(self, spatial: Sequence[int]) -> torch.Tensor:
        """A field (*S): drawn on a grid of at most 16 points per axis and interpolated (the polynomial is smooth,
        and evaluating it at every voxel of a patch costs more than the rest of the transform)."""
        coarse = [min(int(n), 16) for n in spatial]
        field = torch.as_tensor(self.field(torch.ones(1, *coarse)), dtype=torch.float32)  # (1, *coarse)
        if coarse == [int(n) for n in spatial]:
            return field[0]
        mode = "trilinear" if len(spatial) == 3 else "bilinear"
        return torch.nn.functional.interpolate(field[None], size=tuple(spatial), mode=mode, align_corners=True)[0, 0]

    def __call__(self, data: dict) -> dict:
        self.randomize(None)
        if not self._do_transform:
            return data
        image = torch.as_tensor(data[self.key])  # (C, *S)
        background = data.get(_BACKGROUND_KEY)
        inside = (~background if background is not None else torch.ones(image.shape[1:], dtype=torch.bool)).float()
        count = float(inside.sum())
        if count < 2:
            return data
        field = self.draw_field(image.shape[1:])  # (*S)
        every = max(1, int(count) // 20000)  # the floor from a subsample of the foreground
        out = image.clone()
        def mean_sd(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # over the foreground
            mean = (values * inside).sum() / count
            return mean, (((values - mean) ** 2 * inside).sum() / (count - 1)).sqrt()

        for channel in range(image.shape[0]):
            values = image[channel].float()
            mean, std = mean_sd(values)
            sample = values.flatten()[inside.flatten() > 0][::every]
            floor = sample.kthvalue(max(1, int(0.005 * sample.numel()))).values
            biased = (values - floor) * field + floor
            biased_mean, biased_std = mean_sd(biased)
            biased = (biased - biased_mean) / biased_std.clamp_min(1e-6) * std + mean
            out[channel] = torch.where(inside > 0, biased, values).to(out.dtype)
        data = dict(data)
        data[self.key] = out
        return data


class RandGaussianNoiseFastd(mt.RandomizableTransform, mt.MapTransform):
    """MONAI's ``RandGaussianNoised`` (sigma drawn in [0, ``std``]) with the noise drawn by torch in float32.

    MONAI draws it with NumPy in float64, several times torch's time (docs/benchmarks.md). The draw
    stays reproducible: a seed for torch's generator comes from the transform's own random state.
    """

    def __init__(self, key: str, prob: float = 0.1, std: float = 0.1) -> None:
        mt.MapTransform.__init__(self, [key])
        mt.RandomizableTransform.__init__(self, prob)
        self.key, self.std = key, std
        self._sigma, self._seed = 0.0, 0

    def randomize(self, data: dict | None = None) -> None:
        super().randomize(None)
        self._sigma = float(self.R.uniform(0, self.std))
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, data: dict) -> dict:
        self.randomize()
        if not self._do_transform:
            return data
        image = torch.as_tensor(data[self.key])  # (C, *S)
        generator = torch.Generator().manual_seed(self._seed)
        noise = torch.randn(image.shape, generator=generator, dtype=torch.float32) * self._sigma
        data = dict(data)
        data[self.key] = image + noise.to(image.dtype)
        return data


class _MarkBackgroundd(mt.MapTransform):
    """Remember which voxels hold the background value (before the intensity transforms)."""

    def __init__(self, value: float) -> None:
        super().__init__(["image"])
        self.value = value

    def __call__(self, data: dict) -> dict:
        data = dict(data)
        data[_BACKGROUND_KEY] = (torch.as_tensor(data["image"]) == self.value).all(dim=0)  # (*S)
        return data


class _RestoreBackgroundd(mt.MapTransform):
    """Put the background value back where :class:`_MarkBackgroundd` found it."""

    def __init__(self, value: float) -> None:
        super().__init__(["image"])
        self.value = value

    def __call__(self, data: dict) -> dict:
        data = dict(data)
        background = data.pop(_BACKGROUND_KEY)
        image = data["image"]
        data["image"] = torch.where(background, torch.tensor(self.value, dtype=image.dtype), image)  # (C, *S)
        return data


def augmentation(aug: AugmentationConfig, spatial_dims: int, keys: Sequence[str] = ("image", "label"),
                 background: float | None = None, background_masking: bool = False,
                 patch_size: Sequence[int] | None = None, mr: bool = False) -> list[mt.Transform]:
    """Spatial and intensity augmentation of image(/label) patches (MONAI's Rand* dictionary transforms).

    Args:
        aug: the strengths and probabilities.
        spatial_dims: 2 or 3.
        keys: 'image' and optionally a label map (classification augments the image alone).
        background: the value the preprocessing gives everything outside the body; intensity transforms keep
            it there, and padding uses it. None: no defined background.
        background_masking: add :class:`RandBackgroundMaskd` (needs ``background`` and a label key).
        patch_size: the (fixed) size of every input; lets ``RandAffined`` reuse its coordinate grid.
        mr: an MR segmentation input: 'auto' bias-field settings take the stronger MR values.
    """
    if not aug.enabled:
        return []
    keys = list(keys)
    modes = ("bilinear", "nearest")[: len(keys)]
    radians = math.radians(aug.rotate_degrees)
    rotate = (radians,) * (3 if spatial_dims == 3 else 1)
    shift = background is not None and background != 0.0  # RandAffined pads with zeros: make that the background
    # drop the metadata: MONAI's transforms then work on MetaTensors with empty metadata, whose per-operation
    # handling costs far less (nothing downstream reads the metadata of an augmented patch)
    chain: list[mt.Transform] = [mt.EnsureTyped(keys, track_meta=False)]
    if shift:
        chain.append(mt.ShiftIntensityd("image", offset=-background))
    chain.append(mt.RandAffined(keys, prob=aug.affine_probability, rotate_range=rotate,
                                scale_range=(aug.scale,) * spatial_dims, mode=modes, padding_mode="zeros",
                                spatial_size=tuple(patch_size) if patch_size else None, cache_grid=bool(patch_size)))
    if shift:
        chain.append(mt.ShiftIntensityd("image", offset=background))
    for axis in aug.flip_axes:
        chain.append(mt.RandFlipd(keys, prob=0.5, spatial_axis=axis))
    if background is not None and background_masking and len(keys) > 1 and aug.background_mask_probability > 0:
        chain.append(RandBackgroundMaskd("image", keys[1], background, aug.background_mask_probability))
    if background is not None:
        chain.append(_MarkBackgroundd(background))
    p = aug.intensity_probability
    sigma = (0.5, 1.0)
    chain += [
        RandBiasAboveFloord("image", *aug.bias_field(mr)),
        RandGaussianNoiseFastd("image", prob=p, std=aug.noise_std),
        mt.RandGaussianSmoothd("image", prob=p, sigma_x=sigma, sigma_y=sigma, sigma_z=sigma),
        mt.RandScaleIntensityd("image", factors=aug.brightness, prob=p),
        mt.RandShiftIntensityd("image", offsets=0.1, prob=p),
        mt.RandScaleIntensityFixedMeand("image", factors=aug.contrast, prob=p, preserve_range=True),
        mt.RandSimulateLowResolutiond("image", prob=aug.low_resolution_probability, zoom_range=aug.low_resolution_zoom,
                                      upsample_mode="trilinear" if spatial_dims == 3 else "bilinear"),
        mt.RandAdjustContrastd("image", prob=aug.inverted_gamma_probability, gamma=aug.gamma, invert_image=True,
                               retain_stats=True),
        mt.RandAdjustContrastd("image", prob=p, gamma=aug.gamma, retain_stats=True),
    ]
    if background is not None:
        chain.append(_RestoreBackgroundd(background))
    return chain
