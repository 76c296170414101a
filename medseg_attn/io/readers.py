"""One MONAI image reader for every supported input: NIfTI, NRRD, MHA/MHD and DICOM (series folders, files).

:class:`VolumeReader` is a MONAI :class:`~monai.data.ImageReader`, so ``LoadImage``/``LoadImaged`` and every
MONAI transform after it (``Orientationd``, ``Spacingd``, ``Invertd``) work as with MONAI's own readers: the
array comes with a voxel-to-world affine in MONAI's convention, RAS millimetres.

* NIfTI-1/NIfTI-2 (``.nii``, ``.nii.gz``) go through nibabel (MONAI's ``NibabelReader``) under the one header
  rule of :mod:`medseg_attn.io.headers` (the sform when its code is above 0, as nibabel).
* NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``) and DICOM go through SimpleITK. ITK describes
  space in LPS (origin, direction, spacing); the RAS affine is ``diag(-1, -1, 1) @ [direction * spacing | origin]``
  (the first two rows flipped). Array axes are ITK's index axes (x = column, y = row, z = slice), so a label map
  written with that affine lies on exactly the voxels SimpleITK reads.

:class:`LoadVolumed` is ``LoadImaged(keys, image_only=True, ensure_channel_first=True)`` with this reader and
with its errors passed on unchanged (one line naming the file), where MONAI would try other readers first.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from monai import transforms as mt
from monai.data import ImageReader, MetaTensor, NibabelReader
from monai.transforms.io.array import switch_endianness
from monai.utils import ImageMetaKey, MetaKeys, SpaceKeys

from medseg_attn.errors import UserError
from medseg_attn.io import dicom
from medseg_attn.io.formats import DICOM, NIFTI, format_of, format_of_name
from medseg_attn.io.headers import load_nifti
from medseg_attn.io.limits import check_declared_size

logger = logging.getLogger(__name__)

__all__ = ["LoadVolumed", "VolumeReader", "is_nifti", "lps_to_ras", "sitk_affine", "uses_sitk"]


def is_nifti(path: str | Path) -> bool:
    """True for a name ending in a NIfTI suffix (:data:`~medseg_attn.io.formats.NIFTI`); no file is touched."""
    return format_of_name(path) is NIFTI


def uses_sitk(path: str | Path) -> bool:
    """True for inputs read through SimpleITK: NRRD, MetaImage, DICOM files and folders."""
    fmt = format_of(path)
    return fmt is not None and fmt.library == "SimpleITK"


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """Flip the first two rows: LPS world <-> RAS world (its own inverse); 2D affines (3x3) too."""
    flip = np.diag([-1.0, -1.0] + [1.0] * (affine.shape[0] - 2))
    return flip @ affine


def sitk_affine(image: sitk.Image) -> np.ndarray:
    """RAS voxel-to-world affine ((D+1) x (D+1)) of a SimpleITK image (index axes x, y, z)."""
    dims = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dims, dims)
    affine = np.eye(dims + 1)
    affine[:dims, :dims] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)[None, :]
    affine[:dims, dims] = image.GetOrigin()
    return lps_to_ras(affine)  # 2D images too: they lie in the z = 0 plane


def read_sitk(path: str | Path, series_uid: str | None = None, resample_uneven: bool = False) -> sitk.Image:
    """A SimpleITK image from a DICOM folder/file or an NRRD/MetaImage file; one-line errors naming the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    if format_of(path) is DICOM:  # a series folder, or a file holding DICOM
        return dicom.read_dicom(path, series_uid, resample_uneven)[0]
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()  # the header only: its declared size is checked before decoding
        check_declared_size(path, (*reader.GetSize(), reader.GetNumberOfComponents()))
        return reader.Execute()
    except RuntimeError as error:
        reason = next((line.strip() for line in str(error).splitlines() if "ERROR" not in line and line.strip()),
                      "unreadable")
        raise UserError(f"{path}: not a readable image ({reason[:160]})") from None


class VolumeReader(ImageReader):
    """MONAI reader for NIfTI (nibabel), NRRD/MetaImage and DICOM (SimpleITK); RAS affines.

    Args:
        series_uid: the series to read from a DICOM folder holding several.
        resample_uneven: resample a DICOM series with missing slices or uneven spacing onto a regular grid
            (otherwise it is an error).
        series: the DICOM series already found (:func:`medseg_attn.io.dicom.find_series`) for a DICOM path.
    """

    def __init__(self, series_uid: str | None = None, resample_uneven: bool = False,
                 series: dicom.DicomSeries | None = None) -> None:
        super().__init__()
        self.series_uid = series_uid
        self.resample_uneven = resample_uneven
        self._nibabel = NibabelReader()
        self._given = series  # decoded without reading its headers again (a read of that one path only)
        self.series: dicom.DicomSeries | None = None  # after a read: the DICOM series read (the last one)
        self.nifti: Any = None  # after a read: the NIfTI file's header image (nibabel; the voxels not cached)

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        names = [filename] if isinstance(filename, (str, Path)) else list(filename)
        return all((fmt := format_of(n)) is not None and fmt.volume for n in names)

    def read(self, data: Sequence[str | Path] | str | Path, **kwargs: Any) -> list[tuple[np.ndarray, dict]]:
        """Read each file; returns (array, meta) pairs (the reading is done here, ``get_data`` stacks)."""
        names = [data] if isinstance(data, (str, Path)) else list(data)
        loaded = []
        self.series = self.nifti = None
        for name in names:
            path = Path(name)
            if not path.exists():
                raise FileNotFoundError(f"{path}: file not found")
            if format_of(path) is NIFTI:  # a file (a folder is a DICOM series)
                image = load_nifti(path)  # the header rule (sform first), not MONAI's pixdim-led correction
                self._nibabel.filenames = (str(path),)
                check_declared_size(path, image.shape, image.header.get_data_dtype().itemsize)  # before decoding
                try:
                    array, meta = self._nibabel.get_data(image)
                except Exception as error:  # truncated gzip, short data ...
                    raise UserError(f"{path}: cannot read the voxel data ({type(error).__name__}: {error})") from None
                loaded.append((np.asarray(array), dict(meta)))
                if name is names[0]:  # the first channel's header: the one an output keeps
                    self.nifti = image
            elif format_of(path) is DICOM:
                given = self._given if len(names) == 1 and self._given is not None else None
                self.series = given or dicom.select_series(path, self.series_uid)
                loaded.append(self._from_sitk(dicom.read_series(self.series, self.resample_uneven)))
            else:
                loaded.append(self._from_sitk(read_sitk(path, self.series_uid, self.resample_uneven)))
        return loaded

    @staticmethod
    def _from_sitk(image: sitk.Image) -> tuple[np.ndarray, dict]:
        dims = image.GetDimension()
        array = sitk.GetArrayFromImage(image)  # (z, y, x[, components])
        components = image.GetNumberOfComponentsPerPixel()
        spatial = tuple(range(dims))[::-1]
        array = np.transpose(array, spatial + ((dims,) if components > 1 else ()))  # (x, y, z[, c])
        affine = sitk_affine(image)
        meta = {MetaKeys.AFFINE: affine, MetaKeys.ORIGINAL_AFFINE: affine.copy(),
                MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape[:dims]), MetaKeys.SPACE: SpaceKeys.RAS,
                MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if components > 1 else float("nan"),
                "spacing": np.asarray(image.GetSpacing())}
        return array, meta

    def get_data(self, img: list[tuple[np.ndarray, dict]]) -> tuple[np.ndarray, dict]:
        """Stack several files along a new first (channel) axis, as MONAI's readers do."""
        arrays = [array for array, _ in img]
        meta = dict(img[0][1])
        if len(arrays) == 1:
            return arrays[0], meta
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise UserError(f"channel files have different shapes {sorted(shapes)}; expected one grid")
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack(arrays, axis=0), meta


class LoadVolumed(mt.MapTransform):
    """``LoadImaged(keys, image_only=True, ensure_channel_first=True)`` with :class:`VolumeReader`.

    Does what MONAI's ``LoadImage`` does with a given reader (float32 MetaTensor, little-endian metadata, channel
    first) without building MONAI's default readers: the reader's errors (one line naming the file) are raised as
    they are instead of being collected while other readers are tried, and MONAI's optional DICOM decoders stay
    unloaded (they log warnings when NVIDIA's codec library is absent).
    """

    def __init__(self, keys: Sequence[Hashable] | Hashable, series_uid: str | None = None,
                 resample_uneven: bool = False, allow_missing_keys: bool = False,
                 series: dicom.DicomSeries | None = None) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reader = VolumeReader(series_uid, resample_uneven, series)
        self._channel_first = mt.EnsureChannelFirst()

    def load(self, filename: str | Path | Sequence[str | Path]) -> MetaTensor:
        """One file (or one file per channel) -> (C, *S) float32 MetaTensor with a RAS affine."""
        names = [filename] if isinstance(filename, (str, Path)) else list(filename)
        array, meta = self.reader.get_data(self.reader.read(names))
        meta = switch_endianness(meta, "<")
        meta[ImageMetaKey.FILENAME_OR_OBJ] = str(names[0])
        image = MetaTensor.ensure_torch_and_prune_meta(np.asarray(array, dtype=np.float32), meta)
        return self._channel_first(image, meta_dict=meta)

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.load(d[key])
        return d
