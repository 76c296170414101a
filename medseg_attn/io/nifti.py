"""The one NIfTI writer: label maps, probabilities, explanation maps and demo volumes all go through it.

With a ``reference`` (a NIfTI input) the output keeps the reference's header: NIfTI-1/2 class, qform and sform
with their codes, units; it lies on exactly the input's grid. Without one, the output gets ``affine`` (RAS,
scanner space) as qform and sform (code 1) and millimetre units: for DICOM, NRRD or MetaImage inputs that affine
is the one the reader gave, so the NIfTI describes the input's own voxel grid.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medseg_attn.errors import UserError
from medseg_attn.io.files import atomic_write
from medseg_attn.io.volumes import affine_4x4

__all__ = ["UNIT_SLOPE", "write_nifti"]

# maps with values in [0, 1] are stored in 8 bits with this slope: readers (nibabel, 3D Slicer, ITK-SNAP) get
# floats in steps of 1/255; a hair below 1/255, so the largest value reads back as 0.99999994, not above 1
UNIT_SLOPE = float(np.nextafter(np.float32(1 / 255), np.float32(0)))


def _spatial_shape(image: nib.Nifti1Image) -> tuple[int, ...]:
    shape = tuple(image.shape)
    if len(shape) == 4 and shape[3] == 1:  # a 4th axis of length 1 is a 3D volume
        return shape[:3]
    return shape[:3] if len(shape) >= 3 else shape


def write_nifti(array: np.ndarray, path: str | Path, *, affine: np.ndarray | None = None,
                reference: str | Path | nib.Nifti1Image | None = None, dtype: type | np.dtype | None = None,
                unit_interval: bool = False, description: str = "", intent: str | None = None) -> Path:
    """Write ``array`` as NIfTI, atomically (temporary file in the same folder, then rename).

    Args:
        array: (*S) or (*S, C) values; with a ``reference`` the spatial part must match its grid.
        path: the output file (``.nii.gz`` compresses).
        affine: voxel-to-world (RAS) affine, (4, 4) or a 2D grid's (3, 3); used when there is no ``reference``.
        reference: a NIfTI (a path, or its nibabel image) whose header and grid the output keeps.
        dtype: stored data type (default: the array's).
        unit_interval: values in [0, 1] (maps, probabilities) stored as uint8 with the scale factor
            :data:`UNIT_SLOPE`, clipped, NaN as 0.
        description: the header's ``descrip`` (79 characters at most).
        intent: a 4th-axis meaning (e.g. "class probabilities"): stored as a vector intent with this name.

    Raises:
        ValueError: the array does not lie on the reference's grid, or neither affine nor reference is given.
    """
    if unit_interval:
        data = np.clip(array, 0.0, 1.0, dtype=np.float32)  # one float copy, scaled in place (bounded memory)
        data = np.rint(np.multiply(np.nan_to_num(data, copy=False), 255.0, out=data), out=data).astype(np.uint8)
        dtype = np.uint8
    else:
        data = np.asarray(array, dtype=dtype) if dtype is not None else np.asarray(array)
    if reference is not None:  # a path, or the input's header image already read (voxels not needed)
        ref = reference if isinstance(reference, nib.spatialimages.SpatialImage) else nib.load(str(reference))
        spatial = _spatial_shape(ref)
        if tuple(data.shape[: len(spatial)]) != spatial:
            raise UserError(f"{path}: array shape {data.shape} does not match the input grid {spatial} of "
                             f"{ref.get_filename() or reference}")
        header = ref.header.copy()
        image_class = nib.Nifti2Image if isinstance(ref, nib.Nifti2Image) else nib.Nifti1Image
        image = image_class(data, ref.affine, header)
        image.header.set_qform(ref.get_qform(), code=int(ref.header["qform_code"]))
        image.header.set_sform(ref.get_sform(), code=int(ref.header["sform_code"]))
    elif affine is not None:
        full = affine_4x4(affine)
        image = nib.Nifti1Image(data, full)
        image.header.set_qform(full, code=1)
        image.header.set_sform(full, code=1)
        image.header.set_xyzt_units("mm")
    else:
        raise UserError(f"{path}: write_nifti needs an affine or a reference image")
    image.header.set_data_dtype(data.dtype)
    if unit_interval:
        image.header.set_slope_inter(UNIT_SLOPE, 0.0)
        image.header["cal_min"], image.header["cal_max"] = 0.0, 1.0
    else:
        image.header.set_slope_inter(1.0, 0.0)
        image.header["cal_min"], image.header["cal_max"] = 0.0, 0.0
    image.header["descrip"] = description[:79].encode()
    if intent:
        image.header.set_intent("vector", name=intent)
    return atomic_write(path, lambda tmp: nib.save(image, str(tmp)))
