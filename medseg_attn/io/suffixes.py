"""The one table of file suffixes medseg-attn reads (every reader, listing and case name uses it)."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "DICOM_SUFFIXES",
    "IMAGE_SUFFIXES",
    "NIFTI_SUFFIXES",
    "PICTURE_SUFFIXES",
    "SITK_SUFFIXES",
    "VOLUME_SUFFIXES",
    "has_suffix",
    "strip_suffix",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")  # nibabel
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")  # SimpleITK: NRRD and MetaImage (header + data files too)
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")  # single files or slices of a series (Siemens writes .IMA)
VOLUME_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES + DICOM_SUFFIXES  # what segmentation reads as a volume
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")  # 2D pictures (Pillow), classification
IMAGE_SUFFIXES = PICTURE_SUFFIXES + VOLUME_SUFFIXES  # what classification reads


def has_suffix(path: str | Path, suffixes: tuple[str, ...]) -> bool:
    """True when the file name ends in one of ``suffixes`` (case-insensitive: ``.NII.GZ``, ``.IMA``)."""
    return Path(path).name.lower().endswith(suffixes)


def strip_suffix(name: str, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> str:
    """``name`` without the first of ``suffixes`` it ends in (``case.nii.gz`` -> ``case``)."""
    for suffix in suffixes:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
