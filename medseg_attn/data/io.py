"""Reading and writing volumes: one place for file names, geometry checks and atomic writes.

Images are read through MONAI (``LoadImaged``) in the pipelines; this module holds what MONAI does not: cheap
header checks before heavy work, case names that follow the input's file name, and writers that never leave a
half-written file behind (temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "NIFTI_SUFFIXES",
    "Geometry",
    "atomic_write",
    "atomic_write_text",
    "case_name",
    "is_image_file",
    "read_geometry",
    "save_nifti_like",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + (".nrrd", ".mha", ".mhd")


def is_image_file(path: Path) -> bool:
    """True for a visible file with a volume suffix (.nii, .nii.gz, .nrrd, .mha, .mhd)."""
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(IMAGE_SUFFIXES)


def case_name(path: str | Path, strip_channel: bool = False) -> str:
    """File name without its volume suffix; ``strip_channel`` also drops an nnU-Net ``_0000`` suffix."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    if strip_channel and len(name) > 5 and name[-5] == "_" and name[-4:].isdigit():
        name = name[:-5]
    return name


@dataclass(frozen=True)
class Geometry:
    """The voxel grid of a file: shape (spatial axes only), voxel-to-world (RAS mm) affine, spacing."""

    path: Path
    shape: tuple[int, ...]
    affine: np.ndarray
    spacing: tuple[float, ...]
    channels: int = 1


def read_geometry(path: str | Path) -> Geometry:
    """Read a NIfTI header and check that it describes a usable 2D/3D grid.

    A 4th axis of length 1 counts as 3D (scanners and converters often write it); a longer 4th axis is
    reported as ``channels`` (e.g. MSD multi-modal images).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, truncated or non-NIfTI file, zero/non-finite spacing, singular affine.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, expected a NIfTI file (.nii or .nii.gz)")
    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises many kinds for broken files
        raise ValueError(f"{path}: not a readable NIfTI file ({type(error).__name__}: {error})") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{path}: expected a NIfTI image, got {type(image).__name__}")
    shape = tuple(int(s) for s in image.shape)
    channels = 1
    if len(shape) == 4:
        channels = shape[3]
        shape = shape[:3]
    elif len(shape) not in (2, 3):
        raise ValueError(f"{path}: has {len(shape)} axes {shape}; expected a 2D or 3D volume (or 4D with channels)")
    if min(shape) < 1:
        raise ValueError(f"{path}: empty volume of shape {shape}")
    affine = np.asarray(image.affine, dtype=np.float64)
    zooms = tuple(float(z) for z in image.header.get_zooms()[: len(shape)])
    if not np.all(np.isfinite(affine)):
        raise ValueError(f"{path}: the affine holds non-finite values")
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise ValueError(f"{path}: voxel spacing {zooms} must be positive and finite")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(f"{path}: the affine is singular (voxel axes collapse); the header is broken")
    return Geometry(path, shape, affine, zooms, channels)


def _temporary_path(path: Path) -> Path:
    # same folder (so os.replace is atomic) and same suffix (nibabel picks gzip from it)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix="".join(path.suffixes[-2:]), dir=path.parent)
    os.close(handle)
    return Path(name)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``; nothing half-written remains."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def save_nifti_like(array: np.ndarray, reference: str | Path, path: str | Path, dtype: type = np.uint8) -> Path:
    """Write ``array`` as NIfTI on exactly the grid of the ``reference`` NIfTI (same affine, shape, header).

    Args:
        array: spatial array of the reference's shape (channels may follow as a 4th axis).
        reference: the input image whose geometry the output takes.
        path: output file; written atomically.
        dtype: stored data type.
    """
    ref = nib.load(str(reference))
    spatial = tuple(ref.shape[:3]) if len(ref.shape) >= 3 else tuple(ref.shape)
    if len(ref.shape) == 4 and ref.shape[3] == 1:
        spatial = tuple(ref.shape[:3])
    if tuple(array.shape[: len(spatial)]) != spatial:
        raise ValueError(f"{path}: array shape {array.shape} does not match the input grid {spatial} of {reference}")
    header = ref.header.copy()
    header.set_data_dtype(dtype)
    out_class = nib.Nifti2Image if isinstance(ref, nib.Nifti2Image) else nib.Nifti1Image
    image = out_class(np.asarray(array, dtype=dtype), ref.affine, header)
    image.header.set_qform(ref.get_qform(), code=int(ref.header["qform_code"]))
    image.header.set_sform(ref.get_sform(), code=int(ref.header["sform_code"]))
    image.header["scl_slope"] = 1.0
    image.header["scl_inter"] = 0.0
    image.header["cal_min"], image.header["cal_max"] = 0.0, 0.0
    return atomic_write(path, lambda tmp: nib.save(image, str(tmp)))
