"""A body (head) mask that does not depend on the background, and the intensity normalisation built on it.

``nonzero`` is not a foreground: on a scan with acquisition noise it is the whole volume, on a skull-stripped,
masked or converted scan it is the head, so a model trained on one sees a different distribution on the other.
:func:`body_mask` finds the body the same way in both cases:

- MR and other uncalibrated images: the image is smoothed (Gaussian, ``sigma`` voxels) and thresholded at 10 %
  of its robust range, ``p2 + 0.1 (p98 - p2)`` (FSL BET's rule), so noise a few percent of the tissue intensity
  and an exact zero both fall below it;
- CT: the smoothed image is thresholded at -500 HU (air is -1000, fat about -100), before any windowing;

then the largest connected component is kept and its holes are filled (in 3D, then slice by slice along the
last axis: ventricles, bowel gas). The mask drives the foreground crop and the normalisation statistics, and
after normalisation every voxel outside it gets one defined background value (:class:`NormaliseIntensityd`).
"""

from __future__ import annotations

import numpy as np
import torch
from monai import transforms as mt
from scipy import ndimage

from medseg_attn.errors import UserError

__all__ = ["CT_BODY_HU", "MASK_KEY", "ForegroundMaskd", "NormaliseIntensityd", "background_value", "body_mask"]

CT_BODY_HU = -500.0  # smoothed HU above this is body (air -1000, lung about -800..-500 is left to hole filling)
MASK_KEY = "foreground"  # the dictionary key the mask travels under between the transforms


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labelled, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == int(np.argmax(sizes))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    mask = ndimage.binary_fill_holes(mask)
    if mask.ndim == 3:  # cavities open to the volume's top or bottom slice are still closed within a slice
        for index in range(mask.shape[-1]):
            mask[..., index] = ndimage.binary_fill_holes(mask[..., index])
    return mask


def body_mask(image: np.ndarray | torch.Tensor, ct: bool = False, sigma: float = 1.0) -> np.ndarray:
    """The body (head) mask of an image, the same whether its background is noise or exactly zero.

    Args:
        image: (C, *S) intensities (HU for ``ct``); the channels' masks are united.
        ct: threshold at :data:`CT_BODY_HU` instead of the relative MR rule.
        sigma: Gaussian smoothing in voxels before thresholding.

    Returns:
        (*S) boolean mask; all True when the image is constant (nothing to tell apart).
    """
    array = np.asarray(image, dtype=np.float32)
    union = np.zeros(array.shape[1:], dtype=bool)
    for channel in array:
        smooth = ndimage.gaussian_filter(channel, sigma=sigma, mode="nearest", truncate=3.0) if sigma > 0 else channel
        if ct:
            union |= smooth > CT_BODY_HU
            continue
        low, high = np.percentile(smooth, (2.0, 98.0))
        if high <= low:  # a flat channel: no background to tell apart
            continue
        union |= smooth > low + 0.1 * (high - low)
    if not union.any():
        return np.ones(array.shape[1:], dtype=bool)
    return _fill_holes(_largest_component(union))


class ForegroundMaskd(mt.MapTransform):
    """Add the body mask of ``image`` under :data:`MASK_KEY` ((1, *S) uint8 tensor on the image's grid)."""

    def __init__(self, ct: bool) -> None:
        super().__init__(["image"])
        self.ct = ct

    def __call__(self, data: dict) -> dict:
        data = dict(data)
        image = data["image"]
        array = np.asarray(torch.as_tensor(image).detach().cpu())
        data[MASK_KEY] = torch.from_numpy(body_mask(array, ct=self.ct)[None].astype(np.uint8))  # (1, *S)
        return data


def background_value(scheme: str, ct_clip: tuple[float, float] | None = None, ct_mean: float = 0.0,
                     ct_std: float = 1.0) -> float:
    """The value every voxel outside the body has after normalisation (and what patches are padded with).

    z-score: 0 (the foreground mean, as nnU-Net); CT percentile scheme: the lower clip bound normalised (what air
    is clipped to anyway); fixed CT window: 0 (its lower end); none: 0.
    """
    if scheme == "ct" and ct_clip is not None:
        return float((ct_clip[0] - ct_mean) / max(ct_std, 1e-8))
    return 0.0


class NormaliseIntensityd(mt.MapTransform):
    """Normalise ``image`` with the body mask under :data:`MASK_KEY`, then set the background to one value.

    Schemes:
        ``zscore``: per channel, mean and standard deviation over the mask (``use_mask``) or the whole image.
        ``ct``: clip to the dataset's foreground percentiles ``ct_clip`` and z-score with the dataset's
            foreground ``ct_mean``/``ct_std`` (nnU-Net's CT scheme: the same mapping for every case).
        ``ct_window``: clip to a fixed HU ``window`` and scale it to [0, 1].
        ``none``: intensities unchanged.
    With ``use_mask`` the voxels outside the mask are set to :func:`background_value` afterwards.
    """

    def __init__(self, scheme: str, use_mask: bool, ct_clip: tuple[float, float] | None = None,
                 ct_mean: float = 0.0, ct_std: float = 1.0, window: tuple[float, float] = (-1000.0, 1000.0)) -> None:
        super().__init__(["image"])
        if scheme not in ("zscore", "ct", "ct_window", "none"):
            raise UserError(f"intensity scheme {scheme!r}: expected zscore, ct, ct_window or none")
        if scheme == "ct" and ct_clip is None:
            raise UserError("intensity scheme 'ct' needs the dataset's foreground percentiles (ct_clip); "
                             "plan the dataset or use 'ct_window'")
        self.scheme, self.use_mask = scheme, use_mask
        self.ct_clip, self.ct_mean, self.ct_std, self.window = ct_clip, ct_mean, ct_std, window

    def __call__(self, data: dict) -> dict:
        data = dict(data)
        image = data["image"]
        mask = torch.as_tensor(data[MASK_KEY]).bool()[0]  # (*S)
        values = image.clone()
        if self.scheme == "zscore":
            for channel in range(values.shape[0]):
                inside = values[channel][mask] if self.use_mask and mask.any() else values[channel]
                mean, std = inside.mean(), inside.std()
                values[channel] = (values[channel] - mean) / torch.clamp(std, min=1e-8)
        elif self.scheme == "ct":
            low, high = self.ct_clip
            values = (values.clamp(low, high) - self.ct_mean) / max(self.ct_std, 1e-8)
        elif self.scheme == "ct_window":
            low, high = self.window
            values = (values.clamp(low, high) - low) / (high - low)
        if self.use_mask:
            background = background_value(self.scheme, self.ct_clip, self.ct_mean, self.ct_std)
            values[:, ~mask] = background
        data["image"] = values
        return data
