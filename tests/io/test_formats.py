"""The format registry (issue 25, item 3): every ending maps to its format, DICOM is also found by content and as
a folder, and each format's reader reads a tiny file written in that format."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from medseg_attn.io import suffixes
from medseg_attn.io.formats import (
    DICOM,
    FORMATS,
    ITK,
    NIFTI,
    PICTURE,
    format_of,
    format_of_name,
    require_format,
)
from medseg_attn.io.limits import check_file_size
from medseg_attn.io.pictures import read_image
from medseg_attn.io.readers import LoadVolumed, VolumeReader, is_nifti, uses_sitk
from medseg_attn.io.volumes import read_geometry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dicom_factory import write_series  # noqa: E402

ENDINGS = {".nii.gz": NIFTI, ".nii": NIFTI, ".nrrd": ITK, ".nhdr": ITK, ".mha": ITK, ".mhd": ITK, ".dcm": DICOM,
           ".dicom": DICOM, ".ima": DICOM, ".png": PICTURE, ".jpg": PICTURE, ".jpeg": PICTURE, ".tif": PICTURE,
           ".tiff": PICTURE, ".bmp": PICTURE}


def ramp(shape) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape)


@pytest.mark.parametrize("ending, expected", sorted(ENDINGS.items()))
def test_every_ending_names_its_format_in_any_case(ending, expected):
    for name in (f"case_001{ending}", f"CASE_001{ending.upper()}", f"dir.v2/scan{ending.title()}"):
        assert format_of_name(name) is expected, name
        assert format_of(Path("/nonexistent") / name) is expected, name  # no file: the ending alone


def test_the_registry_holds_exactly_the_suffix_table():
    assert {s for fmt in FORMATS for s in fmt.suffixes} == set(suffixes.IMAGE_SUFFIXES) == set(ENDINGS)
    assert {s for fmt in FORMATS if fmt.volume for s in fmt.suffixes} == set(suffixes.VOLUME_SUFFIXES)
    assert [s for fmt in FORMATS for s in fmt.suffixes] == list(suffixes.IMAGE_SUFFIXES)  # listed in that order


@pytest.mark.parametrize("name", ["case.gz", "case.nii.bak", "case.txt", "case", "nii", "case.nii.gz.tmp", "a.dcm.zip"])
def test_unknown_endings_have_no_format(tmp_path, name):
    assert format_of_name(name) is None
    (tmp_path / name).write_bytes(b"not an image")
    assert format_of(tmp_path / name) is None


def test_longest_ending_wins():
    assert format_of_name("x.nii.gz") is NIFTI and format_of_name("x.gz") is None
    assert not is_nifti("x.gz") and is_nifti("X.NII.GZ")


def test_unknown_ending_error_is_one_line_listing_the_accepted_endings():
    with pytest.raises(ValueError) as raised:
        require_format("images/scan.gz")
    message = str(raised.value)
    assert "\n" not in message and message.startswith("images/scan.gz: not a supported image type")
    assert all(suffix in message for suffix in suffixes.IMAGE_SUFFIXES)
    with pytest.raises(ValueError, match=r"x.png: not a supported image type \(expected one of .nii.gz, .nii\)"):
        require_format("x.png", (NIFTI,))
    assert require_format("A.IMA") is DICOM


def test_classification_refuses_an_unknown_ending_naming_the_file(tmp_path):
    path = tmp_path / "scan.gz"
    path.write_bytes(b"\x1f\x8b")
    with pytest.raises(ValueError, match=r"scan.gz: not a supported image type \(expected one of .png, .jpg"):
        read_image(path)


def test_dicom_found_as_folder_by_ending_and_by_content(tmp_path):
    files = write_series(tmp_path / "series", ramp((6, 5, 3)).astype(np.float64))
    assert format_of(tmp_path / "series") is DICOM
    assert format_of(files[0]) is DICOM
    bare = tmp_path / "IM0001"  # a slice saved without an ending (as many scanners write)
    bare.write_bytes(files[0].read_bytes())
    assert format_of_name(bare) is None and format_of(bare) is DICOM
    upper = tmp_path / "SLICE.IMA"
    upper.write_bytes(files[1].read_bytes())
    assert format_of(upper) is DICOM and uses_sitk(upper)
    fake = tmp_path / "fake.dcm"  # a .dcm file that holds no DICOM: no reader claims it
    fake.write_bytes(b"\0" * 200)
    assert format_of(fake) is None and not uses_sitk(fake)
    hidden = tmp_path / ".hidden"
    hidden.write_bytes(files[0].read_bytes())
    assert format_of(hidden) is None
    assert VolumeReader().verify_suffix([tmp_path / "series", bare]) and not VolumeReader().verify_suffix(fake)
    image = LoadVolumed("image").load(tmp_path / "series")
    assert tuple(image.shape) == (1, 6, 5, 3)
    np.testing.assert_array_equal(image[0].numpy(), ramp((6, 5, 3)))


def test_nifti_is_read_through_nibabel(tmp_path):
    volume = ramp((4, 5, 3))
    path = tmp_path / "case.NII.GZ"
    nib.save(nib.Nifti1Image(volume, np.diag([2.0, 3.0, 4.0, 1.0])), str(path))
    assert format_of(path) is NIFTI and NIFTI.library == "nibabel" and not uses_sitk(path)
    assert NIFTI.header_size(path) == ((4, 5, 3), 2)
    assert read_geometry(path).spacing == (2.0, 3.0, 4.0)
    np.testing.assert_array_equal(LoadVolumed("image").load(path)[0].numpy(), volume)


@pytest.mark.parametrize("ending", [".nrrd", ".nhdr", ".mha", ".mhd"])  # (SimpleITK itself reads no ".MHA")
def test_nrrd_and_metaimage_are_read_through_simpleitk(tmp_path, ending):
    volume = ramp((3, 5, 4))  # (z, y, x) as SimpleITK's arrays
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.5, 1.0, 2.0))
    path = tmp_path / f"case{ending}"
    sitk.WriteImage(image, str(path))
    assert format_of(path) is ITK and ITK.library == "SimpleITK" and uses_sitk(path) and not is_nifti(path)
    assert ITK.header_size(path) == ((4, 5, 3, 1), None)
    assert read_geometry(path).shape == (4, 5, 3)
    np.testing.assert_array_equal(LoadVolumed("image").load(path)[0].numpy(), volume.transpose(2, 1, 0))


def test_png_is_read_through_pillow(tmp_path):
    pixels = (np.arange(12, dtype=np.uint8) * 20).reshape(3, 4)
    path = tmp_path / "photo.PNG"
    Image.fromarray(pixels).save(path)
    assert format_of(path) is PICTURE and PICTURE.library == "Pillow" and not PICTURE.volume
    assert PICTURE.header_size is None and not VolumeReader().verify_suffix(path)
    array, info = read_image(path)
    assert info.shape == (3, 4) and info.max_value == 255.0
    np.testing.assert_array_equal(array[0], pixels)


def test_size_guard_reads_the_header_the_registry_names(tmp_path, monkeypatch):
    nifti, nrrd = tmp_path / "a.nii", tmp_path / "b.nrrd"
    nib.save(nib.Nifti1Image(ramp((4, 4, 4)), np.eye(4)), str(nifti))
    sitk.WriteImage(sitk.GetImageFromArray(ramp((4, 4, 4))), str(nrrd))
    monkeypatch.setenv("MEDSEG_ATTN_MAX_VOXELS", "63")
    for path in (nifti, nrrd):
        with pytest.raises(ValueError, match=rf"{path.name}: the header declares 4 x 4 x 4"):
            check_file_size(path)
    png = tmp_path / "big.png"
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(png)
    check_file_size(png)  # pictures: their reader checks the size, not this guard
