"""The input-size guard: a header's declared size is checked before a single voxel is decompressed.

A 4 MB ``.nii.gz`` of zeros can declare 1600^3 voxels (4 GB as uint8, 16 GB as float32 once read): every reader
checks the shape (times channels) its header declares against a voxel limit first, and refuses larger inputs with
one line. The limit is ``MEDSEG_ATTN_MAX_VOXELS`` (default :data:`DEFAULT_MAX_VOXELS`, 2**30 voxels: a
1024x1024x1024 volume, or a 512x512 CT of 4096 slices); ``medseg-attn --max-voxels N`` sets it for one command.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from medseg_attn.errors import UserError
from medseg_attn.io.formats import format_of_name

__all__ = ["DEFAULT_MAX_VOXELS", "MAX_VOXELS_ENV", "check_declared_size", "max_voxels"]

MAX_VOXELS_ENV = "MEDSEG_ATTN_MAX_VOXELS"
DEFAULT_MAX_VOXELS = 1 << 30


def max_voxels() -> int:
    """The voxel limit: ``$MEDSEG_ATTN_MAX_VOXELS`` or :data:`DEFAULT_MAX_VOXELS`.

    Raises:
        ValueError: the variable is not a positive integer.
    """
    raw = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_VOXELS
    try:
        number = float(raw)  # 2e9 and 2000000000 alike
        value = int(number) if math.isfinite(number) else 0
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{MAX_VOXELS_ENV}={raw!r}: expected a positive number of voxels (e.g. 2000000000)")
    return value


def check_declared_size(path: str | Path, shape: Sequence[int], itemsize: int | None = None) -> None:
    """Refuse an image whose header declares more voxels than :func:`max_voxels` (or a negative size).

    Args:
        path: the file or DICOM folder (named in the message).
        shape: every axis the header declares, channels and frames included.
        itemsize: bytes per stored voxel, for the message.

    Raises:
        ValueError: one line naming the file, the declared shape and size, the limit and how to raise it.
    """
    dims = [int(s) for s in shape]
    if any(s < 0 for s in dims):
        raise UserError(f"{path}: the header declares a negative size {tuple(dims)}; the file is broken")
    voxels = math.prod(dims)
    limit = max_voxels()
    if voxels > limit:
        size = f", {voxels * itemsize / 2 ** 30:.1f} GiB stored" if itemsize else ""
        raise UserError(f"{path}: the header declares {' x '.join(map(str, dims))} = {voxels} voxels{size}, above "
                         f"the limit of {limit} voxels; refusing to read it (raise the limit with --max-voxels or "
                         f"{MAX_VOXELS_ENV} if the image is real)")


def check_segmentable(path: str | Path, shape: Sequence[int], minimum: float, maximum: float,
                      spacing: Sequence[float], target_spacing: Sequence[float] | None) -> None:
    """One-line errors for images a segmentation pipeline cannot use (instead of torch or MONAI internals).

    Args:
        path: named in the message.
        shape: spatial shape (X, Y[, Z]).
        minimum, maximum: the intensity range.
        spacing: mm per voxel along each axis (from the affine).
        target_spacing: the model's working spacing (None: the image's own).

    Raises:
        ValueError: fewer than two axes longer than one voxel, a blank image (one value everywhere), or a grid
            that resampling to ``target_spacing`` would blow up beyond :func:`max_voxels` (e.g. 1e6 mm voxels).
    """
    dims = [int(s) for s in shape]
    if sum(side > 1 for side in dims) < 2:
        raise UserError(f"{path}: image of shape {tuple(dims)} has fewer than two axes longer than one voxel; "
                         f"nothing to segment")
    if minimum == maximum:
        raise UserError(f"{path}: every voxel is {minimum:g} (a blank image); nothing to segment")
    if target_spacing:
        target = list(target_spacing) * (len(dims) if len(target_spacing) == 1 else 1)
        voxels = math.prod(math.ceil(side * mm / goal) for side, mm, goal in zip(dims, spacing, target, strict=True))
        if voxels > max_voxels():
            shown = " x ".join(f"{mm:.4g}" for mm in spacing)
            raise UserError(f"{path}: voxel spacing {shown} mm resampled to the model's "
                             f"{' x '.join(f'{mm:g}' for mm in target)} mm would give {voxels:.3g} voxels, above the "
                             f"limit of {max_voxels()}; is the spacing in the header right?")


def check_file_size(path: str | Path) -> None:
    """The size guard alone for one image file (NIfTI, NRRD, MetaImage), from its header; other problems of the
    file are left to the reader that reports them. Commands run it on the files named on their command line
    before loading a model, so an oversized input is a one-line error at once.

    Raises:
        ValueError: the header declares more voxels than :func:`max_voxels`.
    """
    path = Path(path)
    fmt = format_of_name(path)
    if not path.is_file() or fmt is None or fmt.header_size is None:
        return  # DICOM series and pictures: their readers check the size
    try:
        shape, itemsize = fmt.header_size(path)
    except Exception:  # an unreadable header is the reader's to report, with its own message
        return
    check_declared_size(path, shape, itemsize)
