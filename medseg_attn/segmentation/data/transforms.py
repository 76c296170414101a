"""MONAI transform chains: preprocessing presets, foreground-oversampled patches and augmentation.

``preprocessing`` is deterministic (load -> orientation -> spacing -> crop to the body -> intensity preset) and
is what ``CacheDataset`` caches; ``training_augmentation`` draws patches and augments them every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from monai import transforms as mt

from medseg_attn.augmentation import augmentation
from medseg_attn.config import DataConfig
from medseg_attn.errors import UserError
from medseg_attn.io.readers import LoadVolumed
from medseg_attn.segmentation.data.channels import RandChannelDropoutd
from medseg_attn.segmentation.data.foreground import MASK_KEY, ForegroundMaskd, NormaliseIntensityd, background_value

if TYPE_CHECKING:
    from medseg_attn.segmentation.data.planning import Plan

__all__ = ["Preprocessing", "preprocessing", "training_augmentation", "nonzero", "CheckLabelValuesd", "LesionIndicesd"]


def nonzero(image: torch.Tensor) -> torch.Tensor:
    """Foreground for cropping: voxels that are nonzero in any channel (nnU-Net's crop-to-nonzero)."""
    return (image != 0).any(dim=0, keepdim=True)


@dataclass(frozen=True)
class Preprocessing:
    """The resolved preprocessing of a run: fixed at training time (from the plan) and stored in checkpoints.

    ``intensity``: 'zscore', 'ct' (clip to ``ct_clip``, z-score with ``ct_mean``/``ct_std``; without ``ct_clip``
    the fixed ``ct_window`` as in checkpoints before planning), 'ct_window' or 'none'. ``foreground``: 'body'
    (:func:`~medseg_attn.segmentation.data.foreground.body_mask`, relative threshold), 'ct_body' (HU threshold) or
    'nonzero' (checkpoints made before the body mask). ``use_mask``: normalise inside the mask and set the
    background to one value.
    """

    spacing: tuple[float, ...] | None  # target mm per voxel, None = keep each case's own spacing
    orientation: str
    intensity: str
    ct_window: tuple[float, float]
    crop_foreground: bool
    spatial_dims: int
    foreground: str = "body"
    use_mask: bool = False
    ct_clip: tuple[float, float] | None = None  # dataset foreground percentiles 0.5 and 99.5 (HU)
    ct_mean: float = 0.0
    ct_std: float = 1.0

    def to_dict(self) -> dict:
        return {"spacing": list(self.spacing) if self.spacing else None, "orientation": self.orientation,
                "intensity": self.intensity, "ct_window": list(self.ct_window),
                "crop_foreground": self.crop_foreground, "spatial_dims": self.spatial_dims,
                "foreground": self.foreground, "use_mask": self.use_mask,
                "ct_clip": list(self.ct_clip) if self.ct_clip else None, "ct_mean": self.ct_mean, "ct_std": self.ct_std}

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        spacing = values.get("spacing")
        if "foreground" not in values:  # a checkpoint from before the body mask: its nonzero crop and z-score
            intensity = values["intensity"]
            return cls(tuple(spacing) if spacing else None, values["orientation"],
                       "ct_window" if intensity == "ct" else intensity, tuple(values["ct_window"]),
                       bool(values["crop_foreground"]), int(values["spatial_dims"]), "nonzero",
                       intensity == "zscore")
        clip = values.get("ct_clip")
        return cls(tuple(spacing) if spacing else None, values["orientation"], values["intensity"],
                   tuple(values["ct_window"]), bool(values["crop_foreground"]), int(values["spatial_dims"]),
                   str(values["foreground"]), bool(values["use_mask"]), tuple(clip) if clip else None,
                   float(values["ct_mean"]), float(values["ct_std"]))

    @classmethod
    def from_plan(cls, data: DataConfig, plan: Plan) -> Preprocessing:
        """The preprocessing a :class:`~medseg_attn.segmentation.data.planning.Plan` resolves to (its resolved
        values and CT statistics, the orientation, CT window and crop of ``data``)."""
        resolved, stats = plan.resolved, plan.ct_statistics
        spacing = resolved.spacing
        dims = len(resolved.patch_size)
        if spacing is not None and len(spacing) == 1:
            spacing = spacing * dims
        if resolved.intensity == "ct" and stats is None:
            raise UserError("plan: intensity 'ct' needs ct_statistics (the dataset's percentiles), and it has none")
        clip = (stats.p0_5, stats.p99_5) if stats is not None and resolved.intensity == "ct" else None
        ct = plan.modality == "ct" or resolved.intensity in ("ct", "ct_window")
        return cls(tuple(spacing) if spacing else None, data.orientation[:dims], resolved.intensity,
                   tuple(data.ct_window), data.crop_foreground, dims, "ct_body" if ct else "body",
                   bool(resolved.normalisation_mask), clip, float(stats.mean if stats else 0.0),
                   float(stats.std if stats else 1.0))

    def background(self) -> float:
        """The value outside the body after normalisation (and of padding)."""
        return background_value(self.intensity, self.ct_clip, self.ct_mean, self.ct_std)


class ForegroundMask(mt.MapTransform):
    """Nonzero mask under MASK_KEY (the rule of checkpoints made before the body mask)."""

    def __init__(self) -> None:
        super().__init__(["image"])

    def __call__(self, data: dict) -> dict:
        data = dict(data)
        data[MASK_KEY] = nonzero(torch.as_tensor(data["image"])).to(torch.uint8)  # (1, *S)
        return data


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
            raise UserError(f"{source}: label values {sorted(bad)[:5]} are outside the dataset's classes "
                             f"0..{self.num_classes - 1}")
        return data


def preprocessing(prep: Preprocessing, keys: Sequence[str] = ("image", "label"), num_classes: int | None = None,
                  load: bool = True) -> list[mt.Transform]:
    """Deterministic chain from file paths to network-ready arrays (channel first, RAS, target spacing).

    Orientation -> spacing -> body mask -> crop to the mask's bounding box -> intensity normalisation (inside
    the mask when ``prep.use_mask``, background set to one value) -> the mask dropped.

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
    if prep.foreground == "nonzero":
        chain.append(ForegroundMask())
    else:
        chain.append(ForegroundMaskd(ct=prep.foreground == "ct_body"))
    if prep.crop_foreground:
        chain.append(mt.CropForegroundd([*keys, MASK_KEY], source_key=MASK_KEY, allow_smaller=True))
    intensity = "ct_window" if prep.intensity == "ct" and prep.ct_clip is None else prep.intensity
    chain.append(NormaliseIntensityd(intensity, prep.use_mask, prep.ct_clip, prep.ct_mean, prep.ct_std,
                                     prep.ct_window))
    chain.append(mt.DeleteItemsd(MASK_KEY))
    return chain


class LesionIndicesd(mt.Transform):
    """Sampling by lesion, not by voxel: for each lesion class, its location list (``label_indices``, what
    :class:`monai.transforms.RandCropByLabelClassesd` draws a patch centre from) is rebuilt so that every connected
    component (26-connected) holds the same number of entries (its voxels repeated cyclically to ``per_class`` /
    lesions). A case with one large and ten small lesions then centres a lesion patch on each lesion equally often,
    instead of on the large one in proportion to its voxels. Deterministic; runs on the (padded) label the location
    lists were computed on."""

    def __init__(self, classes: Sequence[int], per_class: int = 20000) -> None:
        self.classes = tuple(int(c) for c in classes)
        self.per_class = int(per_class)

    def __call__(self, data: dict) -> dict:
        import numpy as np
        from scipy import ndimage

        label = np.asarray(torch.as_tensor(data["label"]))[0]
        indices = list(data["label_indices"])
        for c in self.classes:
            components, count = ndimage.label(label == c, np.ones((3,) * label.ndim, bool))
            if count <= 1:
                continue  # one lesion (or none): by voxel and by lesion are the same
            flat = components.ravel()
            where = np.flatnonzero(flat)
            where = where[np.argsort(flat[where], kind="stable")]  # grouped by lesion
            starts = np.searchsorted(flat[where], np.arange(1, count + 2))
            share = max(1, self.per_class // count)
            picked = [np.resize(where[a:b], share) for a, b in zip(starts[:-1], starts[1:], strict=True)]
            indices[c] = torch.as_tensor(np.concatenate(picked))
        data = dict(data)
        data["label_indices"] = indices
        return data


def training_augmentation(data: DataConfig, num_classes: int, prep: Preprocessing | None = None,
                          lesion_classes: Sequence[int] = ()) -> list[mt.Transform]:
    """Random patch sampling with foreground oversampling, then MONAI augmentation.

    Patches are drawn by :class:`monai.transforms.RandCropByLabelClassesd`: ``1 - foreground_fraction`` of them
    anywhere, the rest centred on a voxel of a foreground class, classes equally often (small organs get
    seen). Class locations are computed once per case (cached) and subsampled to bound memory. Within the
    ``lesion_classes`` a patch centre is drawn lesion by lesion (:class:`LesionIndicesd`). With ``prep``
    (masked normalisation) the image is padded with its background value, the intensity augmentation keeps that
    value outside the body, and MR-style inputs also get random background masking and the MR bias-field
    strength ('auto').
    """
    background = prep.background() if prep is not None and prep.use_mask else None
    keys = ["image", "label"]
    patch = list(data.patch_size)
    foreground = data.foreground_fraction
    ratios = [1.0 - foreground] + [foreground / max(1, num_classes - 1)] * (num_classes - 1)
    chain: list[mt.Transform] = [
        mt.SpatialPadd("image", spatial_size=patch, value=background or 0.0),
        mt.SpatialPadd("label", spatial_size=patch),
        mt.ClassesToIndicesd("label", num_classes=num_classes, indices_postfix="_indices",
                             max_samples_per_class=20000),
        mt.EnsureTyped(keys, track_meta=False),  # cached as plain tensors: cropping a MetaTensor costs 2x
        *([LesionIndicesd(lesion_classes)] if lesion_classes else []),
        mt.RandCropByLabelClassesd(keys, label_key="label", spatial_size=patch, ratios=ratios,
                                   num_classes=num_classes, num_samples=data.samples_per_case,
                                   indices_key="label_indices", warn=False),
    ]
    masking = prep is not None and prep.foreground == "body"
    chain += augmentation(data.augmentation, len(patch), background=background, background_masking=masking,
                          patch_size=patch, mr=masking)
    if data.augmentation.enabled and data.augmentation.channel_dropout_probability > 0:  # a sequence missing
        chain.append(RandChannelDropoutd(data.augmentation.channel_dropout_probability, background))
    chain.append(mt.DeleteItemsd("label_indices"))
    chain.append(mt.EnsureTyped(keys, dtype=torch.float32, track_meta=False))
    return chain
