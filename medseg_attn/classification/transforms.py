"""Classification transforms: load (any picture or volume :mod:`medseg_attn.io.pictures` reads) -> resize ->
intensity preset [-> MONAI augmentation] -> float tensors."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medseg_attn.config import AugmentationConfig
from medseg_attn.errors import UserError
from medseg_attn.io.pictures import read_image, to_channels

logger = logging.getLogger(__name__)

__all__ = ["ImagePreprocessing", "LoadClassificationImaged", "ResizeImaged", "classification_transforms", "resize"]


@dataclass(frozen=True)
class ImagePreprocessing:
    """How a classifier's inputs are made: fixed at training time and stored in its checkpoints."""

    spatial_dims: int
    channels: int  # 1 grayscale, 3 RGB, or a volume's channels
    image_size: tuple[int, ...]  # every image is resized to this (the training images' size when not set)
    intensity: str  # zscore, scale, minmax, ct, none
    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    resized: bool = True  # data.image_size was set (False: the training images all had image_size already)

    def to_dict(self) -> dict:
        return {"spatial_dims": self.spatial_dims, "channels": self.channels, "image_size": list(self.image_size),
                "intensity": self.intensity, "ct_window": list(self.ct_window), "resized": self.resized}

    @classmethod
    def from_dict(cls, values: dict) -> ImagePreprocessing:
        return cls(int(values["spatial_dims"]), int(values["channels"]), tuple(int(v) for v in values["image_size"]),
                   str(values["intensity"]), tuple(float(v) for v in values["ct_window"]),  # type: ignore[arg-type]
                   bool(values.get("resized", True)))


class LoadClassificationImaged:
    """MONAI-style dictionary transform: ``{"image": path}`` -> ``{"image": (C, *S) float32 tensor}``.

    Reads with :func:`read_image`, converts grayscale/RGB to the model's channels and, for the ``scale``
    preset, divides by the file's integer range (255 for 8-bit, 65535 for 16-bit; floating-point data is kept).
    A ``"mask"`` entry (multi-task) is read too, as a (1, *S) label map.
    """

    def __init__(self, prep: ImagePreprocessing) -> None:
        self.prep = prep

    def __call__(self, data: dict) -> dict:
        out = dict(data)
        path = Path(data["image"])
        array, info = read_image(path)
        if info.spatial_dims != self.prep.spatial_dims:
            raise UserError(f"{path}: is a {info.spatial_dims}D image; the model takes {self.prep.spatial_dims}D "
                             f"images")
        array = to_channels(array, self.prep.channels, path)
        if self.prep.intensity == "scale" and info.max_value:
            array = array / np.float32(info.max_value)
        out["image"] = torch.from_numpy(np.ascontiguousarray(array))
        if "mask" in data:
            mask, _ = read_image(data["mask"])
            if mask.shape[1:] != array.shape[1:]:
                raise UserError(f"{data['mask']}: mask size {mask.shape[1:]} does not match image {path} "
                                 f"{array.shape[1:]}")
            out["mask"] = torch.from_numpy(np.ascontiguousarray(mask[:1]))
        return out


def resize(image: torch.Tensor, size: tuple[int, ...], label: bool = False) -> torch.Tensor:
    """Resize a (C, *S) image to ``size``: area averaging when shrinking every axis, (bi/tri)linear otherwise
    (2D with anti-aliasing); nearest for label maps. Borders keep their values (no zero padding).

    Args:
        image: (C, *S) image or label map.
        size: the new spatial size.
        label: nearest-neighbour (a label map).
    """
    import torch.nn.functional as F

    if tuple(image.shape[1:]) == tuple(size):
        return image
    x = image[None].float()  # (1, C, *S)
    if label:
        out = F.interpolate(x, size=size, mode="nearest-exact")
    elif all(t <= s for t, s in zip(size, image.shape[1:], strict=True)):
        out = F.interpolate(x, size=size, mode="area")
    elif len(size) == 2:
        out = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    else:
        out = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    return out[0].to(torch.float32)


class ResizeImaged:
    """Dictionary transform: resize ``image`` (and a ``mask`` label map, nearest) to a fixed size."""

    def __init__(self, size: tuple[int, ...]) -> None:
        self.size = tuple(size)

    def __call__(self, data: dict) -> dict:
        out = dict(data)
        out["image"] = resize(data["image"], self.size)
        if "mask" in data:
            out["mask"] = resize(data["mask"], self.size, label=True)
        return out


def classification_transforms(prep: ImagePreprocessing, augmentation_config: AugmentationConfig | None = None,
                              mask: bool = False) -> list:
    """The transform chain: load -> resize -> intensity preset [-> MONAI augmentation] -> float tensors.

    Args:
        prep: the resolved preprocessing.
        augmentation_config: an :class:`~medseg_attn.config.AugmentationConfig` for training, None otherwise.
        mask: the samples carry a ``"mask"`` label map (multi-task), resized and augmented with the image.
    """
    from monai import transforms as mt

    from medseg_attn.augmentation import augmentation

    keys = ["image", "mask"] if mask else ["image"]
    chain: list = [LoadClassificationImaged(prep), ResizeImaged(prep.image_size)]
    if prep.intensity == "zscore":
        chain.append(mt.NormalizeIntensityd("image", channel_wise=False))  # one mean/std: colour balance stays
    elif prep.intensity == "minmax":
        chain.append(mt.ScaleIntensityd("image", minv=0.0, maxv=1.0))
    elif prep.intensity == "ct":
        low, high = prep.ct_window
        chain.append(mt.ScaleIntensityRanged("image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True))
    if augmentation_config is not None:
        chain += augmentation(augmentation_config, prep.spatial_dims, keys=keys)
    chain.append(mt.EnsureTyped(keys, dtype=torch.float32, track_meta=False))
    return chain
