"""The one NIfTI header rule: the sform when its code is above 0, else the qform (as nibabel's ``image.affine``).

Every NIfTI reader, writer and statistic of medseg-attn opens files through :func:`load_nifti`, so they all see
the same grid. A header may carry a sform and a qform that describe different grids (e.g. a sform of 2 mm voxels
and a qform of 1 mm): the sform is used, the voxel sizes (``pixdim``) are set to the sform's, and a warning names
the file and how far the two disagree. Without the rule, MONAI's reader would trust whichever form agrees with
``pixdim`` (often the qform) while nibabel, ITK-SNAP and 3D Slicer read the sform: volumes would be off by the
ratio of the voxel volumes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["form_disagreement", "load_nifti"]

ATOL_MM = 1e-3  # sform and qform that differ by less than this (mm) agree
_warned: set[str] = set()


def form_disagreement(image: nib.Nifti1Image) -> float | None:
    """The largest difference (mm) between the sform and the qform when both are set (code > 0) and differ by
    more than 1e-3 mm; None when they agree or only one is set."""
    header = image.header
    if int(header["sform_code"]) <= 0 or int(header["qform_code"]) <= 0:
        return None
    difference = float(np.abs(image.get_sform() - image.get_qform()).max())
    return difference if difference > ATOL_MM else None


def load_nifti(path: str | Path, warn: bool = True) -> nib.Nifti1Image:
    """``nibabel.load`` with the header rule applied: ``pixdim`` agrees with ``image.affine`` (the sform when its
    code is above 0), and a sform that disagrees with the qform is warned about once per file.

    Raises:
        whatever ``nibabel.load`` raises for a broken file (the callers turn it into one line).
    """
    image = nib.load(str(path))
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        return image
    header = image.header
    difference = form_disagreement(image)
    if difference is not None and warn and str(path) not in _warned:
        _warned.add(str(path))
        logger.warning("%s: sform (code %d) and qform (code %d) disagree by up to %.4g mm; using the sform, as "
                       "nibabel does (docs/inputs.md)", path, int(header["sform_code"]), int(header["qform_code"]),
                       difference)
    if int(header["sform_code"]) > 0:
        zooms = list(header.get_zooms())
        spatial = min(3, len(zooms))
        norms = np.sqrt((np.asarray(image.affine, dtype=np.float64)[:3, :3] ** 2).sum(0))[:spatial]
        if not np.allclose(zooms[:spatial], norms, rtol=1e-5, atol=1e-6) and np.all(norms > 0):
            zooms[:spatial] = [float(v) for v in norms]
            header.set_zooms(zooms)  # the image's affine stays the sform; pixdim now tells the same voxel size
    return image
