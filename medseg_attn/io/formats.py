"""THE registry of file formats: which reader handles a file, decided in one place from its name.

Every reader asks :func:`format_of` (or :func:`format_of_name`) instead of testing suffixes itself, as nnU-Net v2's
``imageio`` picks a reader/writer from the file ending:

* :data:`NIFTI` (``.nii``, ``.nii.gz``): nibabel (MONAI's ``NibabelReader`` for segmentation);
* :data:`ITK` (NRRD ``.nrrd``/``.nhdr``, MetaImage ``.mha``/``.mhd``): SimpleITK;
* :data:`DICOM` (``.dcm``, ``.dicom``, ``.ima``, files without an ending that hold DICOM, and folders = series):
  SimpleITK (GDCM);
* :data:`PICTURE` (``.png``, ``.jpg``, ``.jpeg``, ``.tif``, ``.tiff``, ``.bmp``): Pillow (classification only).

The endings themselves stay in :mod:`medseg_attn.io.suffixes` (the one table of suffix literals), which feeds this
registry. Endings are matched case-insensitively and longest first (``.nii.gz`` before any shorter ending).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medseg_attn.errors import UserError
from medseg_attn.io.suffixes import DICOM_SUFFIXES, NIFTI_SUFFIXES, PICTURE_SUFFIXES, SITK_SUFFIXES

__all__ = ["DICOM", "FORMATS", "FileFormat", "ITK", "NIFTI", "PICTURE", "format_of", "format_of_name",
           "is_dicom_file", "require_format"]

HeaderSize = Callable[[Path], tuple[tuple[int, ...], int | None]]


@dataclass(frozen=True)
class FileFormat:
    """One kind of image file and what medseg-attn does with it.

    Attributes:
        name: ``nifti``, ``itk``, ``dicom`` or ``picture`` (what readers dispatch on).
        suffixes: its file endings, lower case (from :mod:`medseg_attn.io.suffixes`).
        library: what decodes it: ``nibabel``, ``SimpleITK`` or ``Pillow``.
        volume: segmentation reads it as a volume (pictures are classification's only).
        header_size: the size guard's look at the header alone: (every declared axis, channels included; bytes per
            voxel or None). None where the reader checks the size itself (DICOM series, pictures).
    """

    name: str
    suffixes: tuple[str, ...]
    library: str
    volume: bool
    header_size: HeaderSize | None = None


def _nifti_header_size(path: Path) -> tuple[tuple[int, ...], int | None]:
    import nibabel as nib

    header = nib.load(str(path)).header
    return tuple(header.get_data_shape()), header.get_data_dtype().itemsize


def _itk_header_size(path: Path) -> tuple[tuple[int, ...], int | None]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return (*reader.GetSize(), reader.GetNumberOfComponents()), None


NIFTI = FileFormat("nifti", NIFTI_SUFFIXES, "nibabel", True, _nifti_header_size)
ITK = FileFormat("itk", SITK_SUFFIXES, "SimpleITK", True, _itk_header_size)
DICOM = FileFormat("dicom", DICOM_SUFFIXES, "SimpleITK", True)
PICTURE = FileFormat("picture", PICTURE_SUFFIXES, "Pillow", False)
FORMATS = (PICTURE, NIFTI, ITK, DICOM)  # the order of suffixes.IMAGE_SUFFIXES (error messages list them so)

_BY_ENDING = sorted(((suffix, fmt) for fmt in FORMATS for suffix in fmt.suffixes), key=lambda item: -len(item[0]))


def format_of_name(path: str | Path) -> FileFormat | None:
    """The format the file name's ending names (case-insensitive, longest ending first); no file is touched."""
    name = Path(path).name.lower()
    return next((fmt for suffix, fmt in _BY_ENDING if name.endswith(suffix)), None)


def format_of(path: str | Path) -> FileFormat | None:
    """The format that reads ``path``: a folder is a DICOM series, a file goes by its ending, and DICOM by content.

    A file without a known ending is DICOM when it holds DICOM (slices are often saved without one); an existing
    ``.dcm``/``.ima`` file that does not hold DICOM has no format (None), as a file with an unknown ending.
    """
    path = Path(path)
    if path.is_dir():
        return DICOM
    named = format_of_name(path)
    if (named is not None and named is not DICOM) or not path.exists():
        return named
    return DICOM if is_dicom_file(path) else None


def require_format(path: str | Path, accepted: tuple[FileFormat, ...] = FORMATS) -> FileFormat:
    """The format of ``path``'s ending among ``accepted``.

    Raises:
        ValueError: any other ending (one line naming the file and listing the accepted endings).
    """
    fmt = format_of_name(path)
    if fmt not in accepted:
        endings = ", ".join(suffix for accepted_format in accepted for suffix in accepted_format.suffixes)
        raise UserError(f"{path}: not a supported image type (expected one of {endings})")
    return fmt


def is_dicom_file(path: Path) -> bool:
    """A regular file with the DICOM preamble ('DICM' at byte 128), or a .dcm/.ima file pydicom can parse."""
    if not path.is_file() or path.name.startswith("."):
        return False
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            if handle.read(4) == b"DICM":
                return True
    except OSError:
        return False
    if format_of_name(path) is DICOM:  # files written without the preamble
        import pydicom

        try:
            pydicom.dcmread(path, stop_before_pixels=True, force=False)
            return True
        except Exception:  # pydicom raises many kinds for non-DICOM files
            return False
    return False
