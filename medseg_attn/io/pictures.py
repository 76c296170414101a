"""Reading single images for classification: 2D PNG/JPEG/TIFF/BMP (Pillow), DICOM files, 3D volumes (NIfTI, NRRD,
MetaImage).

Every reader returns a channel-first float32 array and the file's integer range:

* 2D pictures (Pillow) are (C, H, W), rows first as they are displayed; grayscale 8- and 16-bit (``L``, ``I;16``),
  RGB (alpha dropped, palettes expanded) and 32-bit (``I``, ``F``) modes are read without loss;
* DICOM files (SimpleITK, rescale slope/intercept applied): one frame is a 2D (C, H, W) image, several frames a
  3D volume;
* NIfTI volumes (nibabel) are reoriented to RAS and returned (C, X, Y, Z); a 4th axis holds channels, a 3rd axis
  of length 1 makes a 2D image; NRRD and MetaImage (.mha/.mhd, .nrrd/.nhdr) are read with SimpleITK (C, X, Y, Z).

:func:`image_info` reads only what the header says (size, channels, dimensions), for cheap checks of a whole
dataset before any training. Errors are ``ValueError`` naming the file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg_attn.errors import UserError
from medseg_attn.io.formats import format_of_name, require_format
from medseg_attn.io.limits import check_declared_size

logger = logging.getLogger(__name__)

__all__ = [
    "ImageInfo",
    "image_info",
    "is_classification_image",
    "read_image",
    "to_channels",
]

LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's convert("L")


def is_classification_image(path: Path) -> bool:
    """True for a file whose suffix names a supported image type (hidden files are the caller's business)."""
    return format_of_name(path) is not None


def _kind(path: Path) -> str:
    """The registry's name for the file's ending (``picture``, ``dicom``, ``nifti``, ``itk``); unknown: ValueError."""
    return require_format(path).name


@dataclass(frozen=True)
class ImageInfo:
    """What a header says about an image."""

    path: Path
    shape: tuple[int, ...]  # spatial shape: (H, W) for 2D pictures, (X, Y, Z) for volumes
    channels: int  # 1 grayscale, 3 colour, or the volume's channels
    max_value: float | None  # the integer range (255, 65535, ...) or None for floating-point / rescaled data

    @property
    def spatial_dims(self) -> int:
        return len(self.shape)


_MODE_RANGE = {"1": 1.0, "L": 255.0, "LA": 255.0, "P": 255.0, "PA": 255.0, "RGB": 255.0, "RGBA": 255.0,
               "RGBX": 255.0, "CMYK": 255.0, "YCbCr": 255.0, "LAB": 255.0, "HSV": 255.0, "I;16": 65535.0,
               "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0}
_GRAY_MODES = ("1", "L", "LA", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")


def _open_picture(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise UserError(f"{path}: not a readable image ({type(error).__name__}: {error})") from None
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        image.close()
        raise UserError(f"{path}: holds {frames} frames (multi-page image); classification reads single "
                         f"images; save volumes as NIfTI")
    return image


def _sitk_reader(path: Path):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line.split("ERROR:", 1)[1].strip() for line in lines if "ERROR:" in line),
                      lines[-1] if lines else "unreadable")
        raise UserError(f"{path}: not a readable {'DICOM' if _kind(path) == 'dicom' else 'image'} file "
                         f"({reason[:160]})") from None
    return reader


def image_info(path: str | Path) -> ImageInfo:
    """Header facts of one image (its pixels are not decoded), checked against the voxel limit
    (:mod:`medseg_attn.io.limits`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unsupported type, unreadable header, or more voxels than the limit; the message names the file.
    """
    info = _image_info(Path(path))
    check_declared_size(info.path, (*info.shape, info.channels))
    return info


def _image_info(path: Path) -> ImageInfo:
    """Header facts of one image (its pixels are not decoded).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unsupported type or unreadable header; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    kind = _kind(path)
    if kind == "picture":
        with _open_picture(path) as image:
            width, height = image.size
            channels = 1 if image.mode in _GRAY_MODES else 3
            return ImageInfo(path, (height, width), channels, _MODE_RANGE.get(image.mode))
    if kind == "nifti":
        import nibabel as nib

        try:
            header = nib.load(str(path)).header
        except Exception as error:  # nibabel raises many kinds for broken files
            raise UserError(f"{path}: not a readable NIfTI file ({type(error).__name__}: {error})") from None
        shape = tuple(int(s) for s in header.get_data_shape())
        spatial, channels = _nifti_axes(shape, path)
        dtype = header.get_data_dtype()
        scaled = header.get_slope_inter()[0] not in (None, 1.0)
        integer = np.issubdtype(dtype, np.integer) and not scaled
        return ImageInfo(path, spatial, channels, float(np.iinfo(dtype).max) if integer else None)
    reader = _sitk_reader(path)
    size = tuple(int(s) for s in reader.GetSize())  # (X, Y[, Z])
    channels = int(reader.GetNumberOfComponents())
    if kind == "dicom" and len(size) == 3 and size[2] == 1:
        return ImageInfo(path, (size[1], size[0]), channels, _dicom_range(reader))  # (rows, columns)
    spatial = size if len(size) == 3 else (size[1], size[0])
    return ImageInfo(path, spatial, channels, None)


def _nifti_axes(shape: tuple[int, ...], path: Path) -> tuple[tuple[int, ...], int]:
    if len(shape) == 4:
        spatial, channels = shape[:3], shape[3]
    elif len(shape) in (2, 3):
        spatial, channels = shape, 1
    else:
        raise UserError(f"{path}: has {len(shape)} axes {shape}; expected a 2D or 3D image (or 4D with channels)")
    if len(spatial) == 3 and spatial[2] == 1:
        spatial = spatial[:2]  # one slice: a 2D image
    return tuple(spatial), int(channels)


def _dicom_range(reader) -> float | None:
    """2**BitsStored - 1 for unscaled unsigned pixels, else None (HU and other rescaled values)."""
    def tag(key: str) -> str:
        return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""

    slope, intercept = tag("0028|1053") or "1", tag("0028|1052") or "0"
    try:
        if float(slope) != 1.0 or float(intercept) != 0.0 or tag("0028|0103") == "1":
            return None
        return float(2 ** int(tag("0028|0101") or 16) - 1)
    except ValueError:
        return None


def read_image(path: str | Path) -> tuple[np.ndarray, ImageInfo]:
    """Decode one image.

    Returns:
        ``(array, info)``: float32 (C, *S) with S as in :class:`ImageInfo`, and the header facts.

    Raises:
        FileNotFoundError / ValueError: missing, unsupported, truncated or undecodable file (named).
    """
    path = Path(path)
    info = image_info(path)
    kind = _kind(path)
    try:
        if kind == "picture":
            array = _read_picture(path)
        elif kind == "nifti":
            array = _read_nifti(path)
        else:
            array = _read_sitk(path, kind, info)
    except ValueError:
        raise
    except Exception as error:  # truncated data, decoder errors
        raise UserError(f"{path}: image data cannot be decoded ({type(error).__name__}: {error})") from None
    if not np.all(np.isfinite(array)):
        raise UserError(f"{path}: holds NaN or infinite values")
    return array, info


def _read_picture(path: Path) -> np.ndarray:
    with _open_picture(path) as image:
        image.load()
        mode = image.mode
        if mode == "1":
            image = image.convert("L")
        elif mode in ("LA", "PA", "P", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
            image = image.convert("L" if mode == "LA" else "RGB")
        array = np.asarray(image)
    array = array.astype(np.float32)
    return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)  # (C, H, W)


def _read_nifti(path: Path) -> np.ndarray:
    import nibabel as nib

    from medseg_attn.io.headers import load_nifti

    image = load_nifti(path)
    if len(image.shape) >= 3:
        image = nib.as_closest_canonical(image)  # RAS axis order, so volumes from different scanners agree
    data = np.asarray(image.get_fdata(dtype=np.float32))
    spatial, channels = _nifti_axes(tuple(data.shape), path)
    if data.ndim == 4:
        data = np.moveaxis(data, -1, 0)  # (C, X, Y, Z)
    else:
        data = data[None]
    return data.reshape(channels, *spatial)


def _read_sitk(path: Path, kind: str, info: ImageInfo) -> np.ndarray:
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)  # (Z, Y, X[, C]) or (Y, X[, C])
    if info.channels > 1:
        array = np.moveaxis(array, -1, 0)  # (C, [Z,] Y, X)
    else:
        array = array[None]
    if len(info.shape) == 2:
        return array.reshape(info.channels, *info.shape)  # (C, rows, columns)
    return np.ascontiguousarray(np.moveaxis(array, (1, 2, 3), (3, 2, 1)))  # (C, X, Y, Z) as NIfTI


def to_channels(array: np.ndarray, channels: int, path: Path | str = "image") -> np.ndarray:
    """Grayscale (1) <-> RGB (3): replicate gray, or take the luminance of colour. Other counts must match."""
    have = array.shape[0]
    if have == channels:
        return array
    if have == 1 and channels == 3:
        return np.repeat(array, 3, axis=0)
    if have == 3 and channels == 1:
        return np.tensordot(LUMINANCE, array, axes=(0, 0))[None].astype(np.float32)
    raise UserError(f"{path}: has {have} channels where the model expects {channels}")


