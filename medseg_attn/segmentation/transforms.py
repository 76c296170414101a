"""MONAI transform chains: preprocessing presets, foreground-oversampled patches and augmentation.

``preprocessing`` is deterministic (load -> orientation -> spacing -> intensity preset -> crop to foreground) and
is what ``CacheDataset`` caches; ``training_augmentation`` draws patches and augments them every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from monai import transforms as mt

from medseg_attn.augmentation import augmentation
from medseg_attn.config import DataConfig
from medseg_attn.io.readers import LoadVolumed

__all__ = ["Preprocessing", "preprocessing", "training_augmentation", "nonzero", "CheckLabelValuesd"]


def nonzero(image: torch.Tensor) -> torch.Tensor:
    """Foreground for cropping: voxels that are nonzero in any channel (nnU-Net's crop-to-nonzero)."""
    return (image != 0).any(dim=0, keepdim=True)


@dataclass(frozen=True)
class Preprocessing:
    """The resolved preprocessing of a run: fixed at training time and stored in checkpoints."""

    spacing: tuple[float, ...] | None  # target mm per voxel, None = keep each case's own spacing
    orientation: str
    intensity: str  # 'ct', 'zscore' or 'none'
    ct_window: tuple[float, float]
    crop_foreground: bool
    spatial_dims: int

    def to_dict(self) -> dict:
        return {"spacing": list(self.spacing) if self.spacing else None, "orientation": self.orientation,
                "intensity": self.intensity, "ct_window": list(self.ct_window),
                "crop_foreground": self.crop_foreground, "spatial_dims": self.spatial_dims}

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        spacing = values.get("spacing")
        return cls(tuple(spacing) if spacing else None, values["orientation"], values["intensity"],
                   tuple(values["ct_window"]), bool(values["crop_foreground"]), int(values["spatial_dims"]))

    @classmethod
    def resolve(cls, data: DataConfig, modality: str | None, spacing: tuple[float, ...] | None) -> Preprocessing:
        """Pick the intensity preset from the modality when the config says ``auto``."""
        intensity = data.intensity
        if intensity == "auto":
            chosen = data.modality if data.modality != "auto" else modality
            intensity = {"ct": "ct", "mr": "zscore"}.get(chosen or "", "zscore")
        dims = len(data.patch_size)
        if spacing is not None and len(spacing) == 1:
            spacing = tuple(spacing) * dims
        return cls(spacing, data.orientation[:dims], intensity, tuple(data.ct_window), data.crop_foreground, dims)


class CheckLabelValuesd(mt.MapTransform):
    """Fail with a clear message when a label map holds values outside ``0..num_classes-1``."""

    def __init__(self, key: str, num_classes: int) -> None:
        super().__init__([key])
        self.num_classes = num_classes

    def __call__(self, data: dict) -> dict:
        label = data[self.keys[0]]
        values = torch.unique(torch.as_tensor(label))
        bad = [int(v) if v == int(v) else v for v in values.tolist() if v != int(v) or not 0 <= v < self.num_classes]
        if bad:
            source = getattr(label, "meta", {}).get("filename_or_obj", "label")
            raise ValueError(f"{source}: label values {sorted(bad)[:5]} are outside the dataset's classes "
                             f"0..{self.num_classes - 1}")
        return data


def preprocessing(prep: Preprocessing, keys: Sequence[str] = ("image", "label"), num_classes: int | None = None,
                  load: bool = True) -> list[mt.Transform]:
    """Deterministic chain from file paths to network-ready arrays (channel first, RAS, target spacing).

    Args:
        prep: the resolved preprocessing.
        keys: 'image' and optionally 'label'.
        num_classes: when given and 'label' is a key, label values are checked against it.
        load: start with :class:`~medseg_attn.io.readers.LoadVolumed` (NIfTI, NRRD, MHA, DICOM series folders;
            False when the dict already holds arrays with metadata).
    """
    keys = list(keys)
    has_label = "label" in keys
    chain: list[mt.Transform] = []
    if load:
        chain.append(LoadVolumed(keys))
    chain.append(mt.EnsureTyped("image", dtype=torch.float32))
    if has_label and num_classes is not None:
        chain.append(CheckLabelValuesd("label", num_classes))
    chain.append(mt.Orientationd(keys, axcodes=prep.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))))
    if prep.spacing is not None:
        modes = ["bilinear", "nearest"] if has_label else ["bilinear"]
        chain.append(mt.Spacingd(keys, pixdim=prep.spacing, mode=modes))
    if prep.crop_foreground:
        chain.append(mt.CropForegroundd(keys, source_key="image", select_fn=nonzero, allow_smaller=True))
    if prep.intensity == "ct":
        low, high = prep.ct_window
        chain.append(mt.ScaleIntensityRanged("image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True))
    elif prep.intensity == "zscore":
        chain.append(mt.NormalizeIntensityd("image", nonzero=True, channel_wise=True))
    return chain


def training_augmentation(data: DataConfig, num_classes: int) -> list[mt.Transform]:
    """Random patch sampling with foreground oversampling, then MONAI augmentation.

    Patches are drawn by :class:`monai.transforms.RandCropByLabelClassesd`: ``1 - foreground_fraction`` of them
    anywhere, the rest centred on a voxel of a foreground class, classes equally often (small organs get
    seen). Class locations are computed once per case (cached) and subsampled to bound memory.
    """
    keys = ["image", "label"]
    patch = list(data.patch_size)
    foreground = data.foreground_fraction
    ratios = [1.0 - foreground] + [foreground / max(1, num_classes - 1)] * (num_classes - 1)
    chain: list[mt.Transform] = [
        mt.SpatialPadd(keys, spatial_size=patch),
        mt.ClassesToIndicesd("label", num_classes=num_classes, indices_postfix="_indices",
                             max_samples_per_class=20000),
        mt.RandCropByLabelClassesd(keys, label_key="label", spatial_size=patch, ratios=ratios,
                                   num_classes=num_classes, num_samples=data.samples_per_case,
                                   indices_key="label_indices", warn=False),
    ]
    chain += augmentation(data.augmentation, len(patch))
    chain.append(mt.DeleteItemsd("label_indices"))
    chain.append(mt.EnsureTyped(keys, dtype=torch.float32, track_meta=False))
    return chain
