"""One case read once: :func:`read_case` checks and reads an input (files, a DICOM series, one file per channel)
into a :class:`LoadedCase` that carries everything later steps need of the input, so nothing opens it again:
the voxels with their RAS affine, the DICOM series it came from (DICOM-SEG references it) and the NIfTI header
an output keeps (voxels not read twice)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg_attn.errors import UserError
from medseg_attn.io.dicom import DicomSeries, is_dicom_file
from medseg_attn.io.limits import check_segmentable
from medseg_attn.io.readers import LoadVolumed
from medseg_attn.io.volumes import case_name, read_geometry, spatial_affine

__all__ = ["LoadedCase", "ReadOptions", "check_content", "read_case"]


@dataclass(frozen=True)
class ReadOptions:
    """How to read an input: ``series_uid`` (the series of a DICOM folder holding several), ``resample_uneven``
    (interpolate a DICOM series with missing slices or uneven spacing onto a regular grid), ``volume_index`` (the
    volume of a 4D image for a single-channel model)."""

    series_uid: str | None = None
    resample_uneven: bool = False
    volume_index: int | None = None

    def __post_init__(self) -> None:
        if self.volume_index is not None and self.volume_index < 0:
            raise UserError(f"--volume-index {self.volume_index}: expected 0 or more")


@dataclass(frozen=True)
class LoadedCase:
    """An input as read: ``image`` (C, *S) float32 MetaTensor with its RAS affine, the files it came from, the DICOM
    series read (None for other formats) and, for a NIfTI input, its header image (nibabel, voxels not loaded)."""

    name: str
    files: tuple[Path, ...]
    image: Any
    series: DicomSeries | None = None
    nifti: Any = None

    @property
    def affine(self) -> np.ndarray:
        """The spatial (D+1, D+1) voxel-to-world RAS affine."""
        return spatial_affine(self.image.affine, self.image.ndim - 1)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])


def check_content(source: Any, image: torch.Tensor, target_spacing: Sequence[float] | None = None) -> None:
    """Blank, one-voxel or absurdly spaced images: one line, before any network runs."""
    affine = np.asarray(getattr(image, "affine", np.eye(4)), dtype=np.float64)
    dims = image.ndim - 1
    spacing = np.sqrt((affine[:dims, :dims] ** 2).sum(0))
    check_segmentable(source, tuple(image.shape[1:]), float(image.min()), float(image.max()), spacing,
                      target_spacing)


def read_case(path: str | Path | Sequence[str | Path], options: ReadOptions | None = None, *, spatial_dims: int,
              in_channels: int = 1, target_spacing: Sequence[float] | None = None,
              series: DicomSeries | None = None) -> LoadedCase:
    """Check and read one case.

    Headers are checked first (readable, 2D/3D as expected, channels, spacing, affine), then the voxels are read
    and checked for NaN/Inf, blank images and absurd spacings.

    Args:
        path: an image file or DICOM folder, or one file per channel (``_0000``, ``_0001``, ...).
        options: see :class:`ReadOptions`.
        spatial_dims, in_channels: what the model takes.
        target_spacing: the model's working spacing (a far finer or coarser input is refused).
        series: the DICOM series, when the caller found it already (its headers are not read again).

    Raises:
        ValueError, FileNotFoundError: one line naming the file and the problem.
    """
    options = options or ReadOptions()
    files = tuple(Path(p) for p in path) if isinstance(path, (list, tuple)) else (Path(path),)
    first = files[0]
    axes = "(X, Y, Z)" if spatial_dims == 3 else "(X, Y)"
    for file in files:
        if not file.exists():
            raise FileNotFoundError(f"{file}: file not found")
        if file.is_dir() or is_dicom_file(file):
            continue  # DICOM: the reader checks the series' headers before decoding (and may resample)
        geometry = read_geometry(file, options.series_uid)
        if len(geometry.shape) != spatial_dims:
            raise UserError(f"{file}: {len(geometry.shape)}D image of shape {geometry.shape}; this model expects "
                             f"{spatial_dims}D images {axes}")
        if geometry.channels > 1 and in_channels == 1:
            last = geometry.channels - 1
            if options.volume_index is None:
                raise UserError(f"{file}: 4D image {(*geometry.shape, geometry.channels)} with "
                                 f"{geometry.channels} volumes along axis 4; choose one with --volume-index "
                                 f"(0..{last})")
            if not 0 <= options.volume_index <= last:
                raise UserError(f"{file}: --volume-index {options.volume_index} is outside 0..{last} (axis 4 "
                                 f"holds {geometry.channels} volumes)")
    loader = LoadVolumed("image", series_uid=options.series_uid, resample_uneven=options.resample_uneven,
                         series=series)
    loaded = loader.load(list(files) if len(files) > 1 else first)
    if options.volume_index is not None and loaded.shape[0] > 1 and in_channels == 1:
        loaded = loaded[options.volume_index: options.volume_index + 1]
    if loaded.shape[0] != in_channels:
        raise UserError(f"{first}: image has {loaded.shape[0]} channel(s), the model expects {in_channels}"
                         + (" (give one _0000, _0001, ... file per channel)" if in_channels > 1 else ""))
    shape = tuple(loaded.shape[1:])
    if len(shape) != spatial_dims:
        raise UserError(f"{first}: {len(shape)}D image of shape {shape}; this model expects {spatial_dims}D "
                         f"images {axes}")
    bad = int((~torch.isfinite(loaded)).sum())
    if bad:
        raise UserError(f"{first}: {bad} voxel(s) are NaN or Inf; fix or mask them before prediction")
    check_content(first, loaded, target_spacing)
    return LoadedCase(case_name(first, strip_channel=len(files) > 1), files, loaded, loader.reader.series,
                      loader.reader.nifti)
