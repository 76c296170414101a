"""Reading and writing volumes: one place for file names, geometry checks and atomic writes.

Images are read through MONAI with :class:`medseg_attn.io.readers.VolumeReader` (NIfTI, NRRD, MetaImage,
DICOM) in the pipelines; this module holds what MONAI does not: cheap header checks before heavy work (NIfTI,
NRRD/MetaImage and DICOM series headers), the test whether two files describe the same voxel grid, case names that
follow the input's name, and writers that never leave a half-written file behind (temporary file in the same
folder, then ``os.replace``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medseg_attn.errors import UserError
from medseg_attn.io.formats import DICOM, NIFTI, format_of
from medseg_attn.io.headers import load_nifti
from medseg_attn.io.limits import check_declared_size
from medseg_attn.io.suffixes import VOLUME_SUFFIXES, has_suffix, strip_suffix

logger = logging.getLogger(__name__)

__all__ = [
    "Geometry",
    "affine_4x4",
    "case_name",
    "grid_mapping",
    "is_image_file",
    "on_grid",
    "read_geometry",
]

def affine_4x4(affine: np.ndarray, dims: int | None = None) -> np.ndarray:
    """A voxel-to-world affine as 4x4 (what nibabel's orientation tools and NIfTI headers want).

    A 4x4 affine is returned as it is (as float64) unless ``dims`` < 3 asks for only its first ``dims`` axes. Otherwise
    the first ``dims`` axes (default: all of a (d+1, d+1) affine, e.g. a 2D grid's 3x3) keep their rows and
    columns and their translation (the last column); the other axes get the identity.
    """
    affine = np.asarray(affine, dtype=np.float64)
    dims = affine.shape[0] - 1 if dims is None else dims
    if affine.shape == (4, 4) and dims == 3:
        return affine
    full = np.eye(4)
    full[:dims, :dims], full[:dims, 3] = affine[:dims, :dims], affine[:dims, -1]
    return full


def is_image_file(path: Path) -> bool:
    """True for a visible file with a volume suffix (:data:`~medseg_attn.io.suffixes.VOLUME_SUFFIXES`)."""
    return path.is_file() and not path.name.startswith(".") and has_suffix(path, VOLUME_SUFFIXES)


def case_name(path: str | Path, strip_channel: bool = False) -> str:
    """File name without its volume suffix; ``strip_channel`` also drops an nnU-Net ``_0000`` suffix."""
    name = strip_suffix(Path(path).name, VOLUME_SUFFIXES)
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


def read_geometry(path: str | Path, series_uid: str | None = None, series: Any = None) -> Geometry:
    """Read a header (NIfTI, NRRD/MetaImage, DICOM series) and check that it describes a usable 2D/3D grid.

    A 4th axis of length 1 counts as 3D (scanners and converters often write it); a longer 4th axis is
    reported as ``channels`` (e.g. MSD multi-modal images). The affine is RAS, as MONAI's.

    Args:
        path: a NIfTI/NRRD/MetaImage file, a DICOM folder or a multi-frame DICOM file.
        series_uid: the series of a DICOM folder holding several.
        series: that series, when the caller has found it already (:class:`medseg_attn.io.dicom.DicomSeries`:
            its headers are not read again).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, truncated or non-image file, zero/non-finite spacing, singular affine, a DICOM
            folder without a series or with missing slices, uneven spacing or tilt.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    if format_of(path) is not NIFTI:  # NRRD/MetaImage, DICOM (folders too), or an unknown file for SimpleITK
        return _sitk_geometry(path, series_uid, series)
    try:
        image = load_nifti(path)
    except Exception as error:  # nibabel raises many kinds for broken files
        raise UserError(f"{path}: not a readable NIfTI file ({type(error).__name__}: {error})") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise UserError(f"{path}: expected a NIfTI image, got {type(image).__name__}")
    check_declared_size(path, image.shape, image.header.get_data_dtype().itemsize)  # before any voxel is read
    shape = tuple(int(s) for s in image.shape)
    channels = 1
    if len(shape) == 4:
        channels = shape[3]
        shape = shape[:3]
    elif len(shape) not in (2, 3):
        raise UserError(f"{path}: has {len(shape)} axes {shape}; expected a 2D or 3D volume (or 4D with channels)")
    affine = np.asarray(image.affine, dtype=np.float64)
    zooms = tuple(float(z) for z in image.header.get_zooms()[: len(shape)])
    raw = _raw_pixdim(path, image)[: len(shape)]  # nibabel turns zero pixdim into 1 while loading
    if int(image.header["sform_code"]) == 0 and not all(np.isfinite(z) and z > 0 for z in raw):
        raise UserError(f"{path}: voxel spacing (pixdim) {tuple(float(z) for z in raw)} must be positive and "
                         f"finite (no sform to take the grid from)")
    return _checked(path, shape, affine, zooms, channels)


def _raw_pixdim(path: Path, image: nib.Nifti1Image) -> np.ndarray:
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as handle:
        header = type(image.header).from_fileobj(handle, check=False)
    return np.asarray(header["pixdim"][1:], dtype=np.float64)


def _checked(path: Path, shape: tuple[int, ...], affine: np.ndarray, zooms: tuple[float, ...], channels: int
             ) -> Geometry:
    if min(shape) < 1:
        raise UserError(f"{path}: empty volume of shape {shape}")
    if not np.all(np.isfinite(affine)):
        raise UserError(f"{path}: the affine holds non-finite values")
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise UserError(f"{path}: voxel spacing {zooms} must be positive and finite")
    if abs(np.linalg.det(affine[:-1, :-1])) < 1e-12:
        raise UserError(f"{path}: the affine is singular (voxel axes collapse); the header is broken")
    return Geometry(path, shape, affine, zooms, channels)


def _sitk_geometry(path: Path, series_uid: str | None, series: Any = None) -> Geometry:
    """Header geometry of a DICOM series/file (pydicom headers) or an NRRD/MetaImage file (SimpleITK)."""
    from medseg_attn.io import dicom
    from medseg_attn.io.readers import lps_to_ras

    if format_of(path) is DICOM:
        series = series or dicom.select_series(path, series_uid)
        if series.problems:
            raise UserError(series.problems[0])
        spacing = (*series.pixel_spacing, float(series.spacing or 1.0))
        shape = (series.columns, series.rows, series.slices)
        check_declared_size(path, shape)
        return _checked(path, shape, lps_to_ras(dicom.series_affine(series)), spacing, 1)
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise UserError(f"{path}: not a readable image (expected NIfTI, NRRD, MetaImage or DICOM)") from None
    dims = reader.GetDimension()
    shape = tuple(int(s) for s in reader.GetSize())
    channels = int(reader.GetNumberOfComponents())
    check_declared_size(path, (*shape, channels))
    if dims == 4:
        channels, shape = shape[3], shape[:3]
    elif dims not in (2, 3):
        raise UserError(f"{path}: has {dims} axes {shape}; expected a 2D or 3D volume (or 4D with channels)")
    dims = len(shape)
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(-1)
    full = int(round(np.sqrt(direction.size)))
    direction = direction.reshape(full, full)[:dims, :dims]
    spacing = tuple(float(v) for v in reader.GetSpacing()[:dims])
    affine = np.eye(dims + 1)
    affine[:dims, :dims] = direction * np.asarray(spacing)[None, :]
    affine[:dims, dims] = reader.GetOrigin()[:dims]
    return _checked(path, shape, lps_to_ras(affine), spacing, channels)


def grid_mapping(shape: tuple[int, ...], affine: np.ndarray, target_shape: tuple[int, ...],
                 target_affine: np.ndarray, atol: float = 1e-3) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """How an array on one grid is put onto another grid covering the same voxels (axes permuted/flipped).

    Two grids are the same physical grid when every voxel centre of one is a voxel centre of the other: the
    voxel-to-voxel map ``inv(target_affine) @ affine`` is a signed permutation whose flips start at the far end.
    (A label map stored LAS for an LPS series is such a pair.)

    Returns:
        ``(axes, flips)`` for :func:`on_grid`, or None when the grids differ. ``axes`` is the identity and
        ``flips`` empty when the grids are equal.
    """
    dims = len(shape)
    if len(target_shape) != dims:
        return None
    mapping = np.linalg.inv(np.asarray(target_affine, dtype=np.float64)) @ np.asarray(affine, dtype=np.float64)
    linear, offset = mapping[:dims, :dims], mapping[:dims, dims]
    signs = np.round(linear)
    if not np.allclose(linear, signs, atol=atol) or not np.all(np.abs(signs).sum(0) == 1):
        return None
    if not np.all(np.abs(signs).sum(1) == 1):
        return None
    axes, flips = [], []
    for target_axis in range(dims):
        source_axis = int(np.flatnonzero(signs[target_axis])[0])
        size = shape[source_axis]
        if target_shape[target_axis] != size:
            return None
        flipped = signs[target_axis, source_axis] < 0
        expected = size - 1 if flipped else 0
        if abs(offset[target_axis] - expected) > atol * max(1, size):
            return None
        axes.append(source_axis)
        if flipped:
            flips.append(target_axis)
    return tuple(axes), tuple(flips)


def on_grid(array: np.ndarray, mapping: tuple[tuple[int, ...], tuple[int, ...]]) -> np.ndarray:
    """Put a spatial array onto the target grid of :func:`grid_mapping` (no interpolation, exact voxels)."""
    axes, flips = mapping
    moved = np.transpose(array, axes + tuple(range(len(axes), array.ndim)))
    return np.flip(moved, flips) if flips else moved


def spatial_affine(affine: Any, dims: int) -> np.ndarray:
    """(dims+1, dims+1) voxel-to-world affine from MONAI's (possibly 4x4) affine (an array or a tensor)."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape[0] == dims + 1:
        return a
    keep = list(range(dims)) + [a.shape[0] - 1]
    return a[np.ix_(keep, keep)]
