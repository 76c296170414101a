"""What the reader sees in a file or folder: the report behind ``medseg-attn inspect``.

Shape, voxel spacing, orientation codes, the RAS affine (MONAI, nibabel) and ITK's LPS direction and origin
(SimpleITK, DICOM), stored data type, intensity range, NaN/Inf counts, and for label maps the values and their
voxel counts; for a DICOM folder, every series with its UID, description, slice count and slice checks; for an
RTSTRUCT file, its ROIs with their contour counts and the series it references.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medseg_attn.errors import UserError
from medseg_attn.io import dicom
from medseg_attn.io.formats import DICOM, NIFTI, format_of
from medseg_attn.io.volumes import affine_4x4, is_image_file, read_geometry

logger = logging.getLogger(__name__)

__all__ = ["describe", "describe_volume"]

MAX_LABELS = 256  # an integer image with at most this many distinct values is shown as a label map


def _matrix(name: str, matrix: np.ndarray) -> list[str]:
    rows = [" ".join(f"{v:10.4f}" for v in row) for row in np.asarray(matrix, dtype=np.float64)]
    return [f"{name}:"] + [f"  [{row} ]" for row in rows]


def _axcodes(affine: np.ndarray) -> str:
    import nibabel as nib

    dims = affine.shape[0] - 1
    return "".join(code or "?" for code in nib.aff2axcodes(affine_4x4(affine))[:dims])


def _format(path: Path) -> str:
    fmt = format_of(path)
    if fmt is DICOM:
        return "DICOM series (SimpleITK / GDCM)" if path.is_dir() else "DICOM multi-frame file (SimpleITK / GDCM)"
    if fmt is NIFTI:
        import nibabel as nib

        image = nib.load(str(path))
        version = "NIfTI-2" if isinstance(image, nib.Nifti2Image) else "NIfTI-1"
        header = image.header
        return (f"{version} (nibabel), stored {header.get_data_dtype()}, qform_code {int(header['qform_code'])}, "
                f"sform_code {int(header['sform_code'])}")
    return f"{path.suffix.lstrip('.').upper()} (SimpleITK)"


def describe_volume(path: str | Path, series_uid: str | None = None, resample_uneven: bool = False) -> list[str]:
    """Report lines for one volume (file, DICOM series folder or multi-frame file)."""
    path = Path(path)
    if format_of(path) is not DICOM:
        read_geometry(path)  # header checks first (size guard included): one clear line for broken files
    from medseg_attn.io.readers import VolumeReader  # MONAI, imported only when voxels are to be read

    reader = VolumeReader(series_uid, resample_uneven)
    lines = [f"format: {_format(path)}"]
    array, meta = reader.get_data(reader.read(path))
    affine = np.asarray(meta["affine"], dtype=np.float64)
    dims = affine.shape[0] - 1
    spatial, channels = tuple(int(s) for s in array.shape[:dims]), array.shape[dims:]
    spacing = np.sqrt((affine[:dims, :dims] ** 2).sum(0))
    lps = np.diag([-1.0, -1.0] + [1.0] * (dims - 2)) @ affine[:dims, :dims]
    lines += [
        f"shape: {spatial}" + (f" x {channels[0]} channels/volumes (axis {dims + 1})" if channels else ""),
        f"data type (as read): {array.dtype}",
        "spacing (mm): " + " x ".join(f"{v:.6g}" for v in spacing),
        f"orientation: {_axcodes(affine)} (voxel axes point to these directions; RAS+ codes as nibabel's)",
        *_matrix("affine (voxel -> RAS mm, as MONAI and nibabel)", affine),
        *_matrix("direction (LPS, as SimpleITK)", lps / np.where(spacing > 0, spacing, 1.0)[None, :]),
        "origin (LPS mm, as SimpleITK): " + ", ".join(f"{v:.6g}" for v in
                                                     (np.diag([-1.0, -1.0, 1.0][:dims]) @ affine[:dims, dims])),
    ]
    values = np.asarray(array)
    finite = np.isfinite(values) if np.issubdtype(values.dtype, np.floating) else np.ones(values.shape, bool)
    nan = int(np.isnan(values).sum()) if np.issubdtype(values.dtype, np.floating) else 0
    inf = int(values.size - finite.sum() - nan)
    if finite.any():
        good = values[finite]
        lines.append(f"intensity: min {good.min():.6g}, max {good.max():.6g}, mean {good.mean():.6g}")
    lines.append(f"non-finite voxels: {nan} NaN, {inf} Inf")
    if finite.all() and values.size and np.all(np.mod(values, 1) == 0):
        found, counts = np.unique(values, return_counts=True)
        if len(found) <= MAX_LABELS and found.min() >= 0:
            listed = ", ".join(f"{int(v)}: {int(c)}" for v, c in zip(found, counts, strict=True))
            lines.append(f"label values (value: voxels): {listed}")
    return lines


def _series_lines(series: dicom.DicomSeries) -> list[str]:
    lines = [f"  series {series.uid or '(blank SeriesInstanceUID)'}",
             f"    description '{series.description}', modality {series.modality or '?'}, series number "
             f"{series.series_number or '?'}",
             f"    {series.slices} slice(s) of {series.columns}x{series.rows}"
             + (f", slice step {series.spacing:.6g} mm" if series.spacing else "")
             + (", one multi-frame file" if series.multiframe else f", {len(series.files)} file(s)")]
    for problem in series.problems:
        lines.append(f"    problem: {problem}")
    if series.missing_uids:
        lines.append(f"    blank {', '.join(series.missing_uids)}: no DICOM-SEG output possible (NIfTI works)")
    return lines


def describe(path: str | Path, series_uid: str | None = None, resample_uneven: bool = False) -> list[str]:
    """Report lines for a file, a DICOM folder (its series, then the chosen/only one) or a folder of volumes.

    Raises:
        FileNotFoundError, ValueError: the path cannot be read (one line naming it).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found")
    lines = [f"path: {path}"]
    if path.is_file():
        from medseg_attn.io.rtstruct_read import describe_rtstruct, is_rtstruct

        if is_rtstruct(path):  # contours, not voxels: its ROIs, contour counts and the series it references
            return lines + describe_rtstruct(path)
        return lines + describe_volume(path, series_uid, resample_uneven)
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    if any(dicom.is_dicom_file(p) for p in entries if p.is_file()):
        found = dicom.find_series(path)
        lines.append(f"DICOM series found: {len(found)}")
        for series in found:
            lines += _series_lines(series)
        chosen = [s for s in found if not series_uid or s.uid == series_uid]
        if len(chosen) == 1 and (not chosen[0].problems or resample_uneven and chosen[0].resamplable):
            lines.append(f"volume of series {chosen[0].uid or '(blank SeriesInstanceUID)'}:")
            lines += ["  " + line for line in describe_volume(path, chosen[0].uid or None, resample_uneven)]
        elif len(chosen) > 1:
            lines.append("choose a series with --series-uid to see its voxels")
        return lines
    volumes = [p for p in entries if is_image_file(p)]
    if not volumes:
        listing = ", ".join(p.name for p in entries[:5]) or "nothing"
        raise UserError(f"{path}: no image files or DICOM series in this folder (found {listing})")
    lines.append(f"image files: {len(volumes)}")
    for volume in volumes:
        try:
            geometry = read_geometry(volume)
            lines.append(f"  {volume.name}: shape {geometry.shape}, spacing "
                         + " x ".join(f"{v:.4g}" for v in geometry.spacing)
                         + f" mm, orientation {_axcodes(geometry.affine)}"
                         + (f", {geometry.channels} channels/volumes" if geometry.channels > 1 else ""))
        except (ValueError, OSError) as error:
            lines.append(f"  {volume.name}: problem: {error}")
    return lines
