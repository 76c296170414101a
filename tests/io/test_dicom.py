"""DICOM series and SimpleITK formats read on exactly the right grid: real files written with pydicom/SimpleITK,
and the real TotalSegmentator CT series with its reference label map."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from medseg_attn.io.dicom import find_series, read_dicom, select_series
from medseg_attn.io.nifti import write_nifti
from medseg_attn.io.readers import LoadVolumed
from medseg_attn.io.volumes import grid_mapping, on_grid, read_geometry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dicom_factory import write_series  # noqa: E402


def load(path, **options):
    image = LoadVolumed("image", **options).load(path)
    return image[0].numpy(), np.asarray(image.affine, dtype=np.float64)


def ramp(shape=(12, 14, 9)) -> np.ndarray:
    """Values that tell every voxel apart: 1000 z + 10 y + x (in HU after rescale)."""
    x, y, z = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return (1000 * z + 10 * y + x - 1024).astype(np.float64)


def expected_ras(direction, spacing, origin) -> np.ndarray:
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction) * np.asarray(spacing)[None, :]
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def oblique(degrees=20.0) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def test_slices_ordered_by_position_not_name_or_instance_number(tmp_path):
    volume, direction, spacing, origin = ramp(), oblique(), (0.8, 0.9, 2.5), (10.0, -20.0, 30.0)
    rng = np.random.default_rng(0)
    count = volume.shape[2]
    names = [f"IM{i:04d}" for i in rng.permutation(count)]  # no suffix, shuffled
    write_series(tmp_path / "shuffled", volume, spacing, origin, direction, slope=2.0, intercept=-1024.0,
                 names=names, instance_numbers=list(rng.permutation(count) + 1))
    write_series(tmp_path / "ordered", volume, spacing, origin, direction, slope=2.0, intercept=-1024.0)
    shuffled, affine = load(tmp_path / "shuffled")
    ordered, ordered_affine = load(tmp_path / "ordered")
    np.testing.assert_allclose(shuffled, volume, atol=1.0)  # rescale slope 2: stored values round to 2 HU steps
    np.testing.assert_array_equal(shuffled, ordered)
    np.testing.assert_allclose(affine, expected_ras(direction, spacing, origin), atol=1e-4)
    np.testing.assert_allclose(affine, ordered_affine)
    series = select_series(tmp_path / "shuffled")
    along = np.asarray(series.positions)
    assert np.all(np.diff(along) > 0)  # files in position order along the slice normal
    # GDCM's own order agrees with ours
    gdcm = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "shuffled"))
    assert [Path(f).name for f in gdcm] == [f.name for f in series.files]


def test_series_stacked_against_its_normal_keeps_world_positions(tmp_path):
    volume = ramp()
    direction = oblique(-30.0)
    direction[:, 2] *= -1  # slices written going down the normal
    write_series(tmp_path / "down", volume, (1.0, 1.0, 3.0), (5.0, 6.0, 7.0), direction)
    array, affine = load(tmp_path / "down")
    written = expected_ras(direction, (1.0, 1.0, 3.0), (5.0, 6.0, 7.0))
    mapping = grid_mapping(volume.shape, written, array.shape, affine)
    assert mapping is not None and mapping[1] == (2,)  # the same grid, slice axis reversed
    np.testing.assert_array_equal(on_grid(volume, mapping), array)


def test_missing_slice_is_reported_and_resampled_on_request(tmp_path):
    volume = ramp()
    write_series(tmp_path / "gap", volume, (1.0, 1.0, 2.0), skip=[4])
    with pytest.raises(ValueError, match=r"gap: 1 slice\(s\) missing: gap of 4 mm after slice 3.*--resample-uneven"):
        load(tmp_path / "gap")
    with pytest.raises(ValueError, match="1 slice\\(s\\) missing"):
        read_geometry(tmp_path / "gap")
    array, affine = load(tmp_path / "gap", resample_uneven=True)
    assert array.shape == volume.shape
    np.testing.assert_allclose(array, volume, atol=1e-3)  # a linear ramp is interpolated exactly
    np.testing.assert_allclose(np.abs(np.diag(affine))[:3], (1.0, 1.0, 2.0))


def test_uneven_spacing_duplicates_and_tilt_are_refused(tmp_path):
    volume = ramp((8, 8, 5))
    uneven = [(0.0, 0.0, z) for z in (0.0, 2.0, 4.0, 5.5, 7.5)]
    write_series(tmp_path / "uneven", volume, positions=uneven)
    with pytest.raises(ValueError, match="uneven slice spacing, 1.5 to 2 mm"):
        load(tmp_path / "uneven")
    twice = [(0.0, 0.0, z) for z in (0.0, 2.0, 2.0, 4.0, 6.0)]
    write_series(tmp_path / "twice", volume, positions=twice)
    with pytest.raises(ValueError, match="2 slices share a position"):
        load(tmp_path / "twice")
    tilted = [(0.0, 0.5 * k, 2.0 * k) for k in range(5)]  # 14 degrees gantry tilt
    write_series(tmp_path / "tilt", volume, positions=tilted)
    with pytest.raises(ValueError, match="gantry tilt of 14.0 degrees"):
        load(tmp_path / "tilt", resample_uneven=True)


def test_folder_with_two_series_and_bad_folders(tmp_path):
    volume = ramp((8, 8, 4))
    first = write_series(tmp_path / "mixed", volume, description="first", series_number=3)
    second = write_series(tmp_path / "mixed", volume[::-1] + 5, (0.5, 0.5, 1.0), names=[f"b{k}.dcm" for k in range(4)],
                          description="second", series_number=4)
    (tmp_path / "mixed" / "notes.txt").write_text("not an image")
    found = find_series(tmp_path / "mixed")
    assert sorted(s.description for s in found) == ["first", "second"]
    with pytest.raises(ValueError, match="holds 2 series .*choose one with --series-uid"):
        load(tmp_path / "mixed")
    uid = pydicom.dcmread(second[0]).SeriesInstanceUID
    array, _ = load(tmp_path / "mixed", series_uid=uid)
    np.testing.assert_allclose(array, volume[::-1] + 5)
    with pytest.raises(ValueError, match="no series with SeriesInstanceUID 1.2.3"):
        load(tmp_path / "mixed", series_uid="1.2.3")
    assert len(first) == 4
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: empty folder"):
        load(tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("hello")
    with pytest.raises(ValueError, match="junk: no DICOM image series in this folder \\(found readme.txt\\)"):
        load(tmp_path / "junk")
    with pytest.raises(ValueError, match="a single DICOM slice is not a volume"):
        load(first[0])


def test_multiframe_file_on_the_grid_of_its_series(tmp_path):
    import highdicom as hd

    volume = ramp((10, 12, 6))
    files = write_series(tmp_path / "series", volume, (0.7, 0.7, 1.5), (1.0, 2.0, 3.0), oblique(10))
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(f) for f in files], series_instance_uid=generate_uid(), series_number=9,
        sop_instance_uid=generate_uid(), instance_number=1)
    enhanced.save_as(tmp_path / "enhanced.dcm")
    series, series_affine = load(tmp_path / "series")
    frames, frames_affine = load(tmp_path / "enhanced.dcm")
    mapping = grid_mapping(frames.shape, frames_affine, series.shape, series_affine)
    assert mapping is not None
    np.testing.assert_array_equal(on_grid(frames, mapping), series)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".nii"])
def test_lps_anisotropic_volume_through_simpleitk_formats(tmp_path, suffix):
    volume = ramp((10, 7, 5)).astype(np.int16)
    affine = np.diag([-0.7, -0.9, 3.0, 1.0])  # LPS storage, anisotropic
    affine[:3, 3] = [40.0, 50.0, -60.0]
    nib.save(nib.Nifti1Image(volume, affine), str(tmp_path / "source.nii.gz"))
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "source.nii.gz")), str(tmp_path / f"copy{suffix}"))
    array, read_affine = load(tmp_path / f"copy{suffix}")
    np.testing.assert_array_equal(array, volume)
    np.testing.assert_allclose(read_affine, affine, atol=1e-5)
    assert read_geometry(tmp_path / f"copy{suffix}").shape == volume.shape


def _reference(ct_dir):
    series, series_affine = load(ct_dir / "dicom")
    reference = nib.load(str(ct_dir / "example_seg_dicom.nii.gz"))
    labels = np.asarray(reference.dataobj)
    mapping = grid_mapping(labels.shape, reference.affine, series.shape, series_affine)
    return series, series_affine, labels, reference, mapping


def test_real_ct_series_and_reference_labels_share_the_grid(ct_dir):
    series, series_affine, labels, reference, mapping = _reference(ct_dir)
    assert series.shape == (512, 512, 20)
    np.testing.assert_allclose(np.abs(np.diag(series_affine))[:3], (0.9765625, 0.9765625, 2.0))
    assert nib.aff2axcodes(series_affine) == ("L", "P", "S")
    assert series.min() == -1024 and series.max() > 1000  # HU: rescale intercept applied
    assert mapping == ((0, 1, 2), (1,))  # reference stored LAS: the same grid with the y axis flipped
    on_series = on_grid(labels, mapping)
    liver = series[on_series == 5]
    assert 40 < liver.mean() < 150, liver.mean()  # contrast-enhanced liver: soft tissue, about 90 HU
    assert series[on_series == 69].mean() > 300  # humerus: bone
    assert series[labels == 5].mean() < 0  # without the flip the liver label would sit on air and fat


def test_label_map_written_for_the_series_maps_onto_the_reference_by_identity(ct_dir, tmp_path):
    series, series_affine, labels, reference, mapping = _reference(ct_dir)
    write_nifti(on_grid(labels, mapping), tmp_path / "seg.nii.gz", affine=series_affine)
    written = sitk.ReadImage(str(tmp_path / "seg.nii.gz"))
    source = read_dicom(ct_dir / "dicom")[0]
    assert written.GetSize() == source.GetSize()
    np.testing.assert_allclose(written.GetOrigin(), source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetSpacing(), source.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(written.GetDirection(), source.GetDirection(), atol=1e-6)
    target = sitk.ReadImage(str(ct_dir / "example_seg_dicom.nii.gz"))
    resampled = sitk.Resample(written, target, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(resampled), sitk.GetArrayFromImage(target))


def test_real_series_shuffled_names_and_missing_slice(ct_dir, tmp_path):
    files = sorted((ct_dir / "dicom").iterdir())
    rng = np.random.default_rng(1)
    shuffled, gap = tmp_path / "shuffled", tmp_path / "gap"
    shuffled.mkdir()
    gap.mkdir()
    for index, path in zip(rng.permutation(len(files)), files):
        shutil.copy(path, shuffled / f"x{index:03d}")
    series = select_series(ct_dir / "dicom")
    for path in series.files[:7] + series.files[8:]:
        shutil.copy(path, gap / path.name)
    original, affine = load(ct_dir / "dicom")
    copy, copy_affine = load(shuffled)
    np.testing.assert_array_equal(copy, original)
    np.testing.assert_array_equal(copy_affine, affine)
    with pytest.raises(ValueError, match="gap: 1 slice\\(s\\) missing: gap of 4 mm after slice 6"):
        load(gap)


def test_dataset_entry_pointing_to_a_dicom_folder(ct_dir, tmp_path):
    import json

    from monai import transforms as mt

    from medseg_attn.segmentation.data.datasets import check_cases, load_dataset, median_spacing
    from medseg_attn.segmentation.data.transforms import Preprocessing, preprocessing

    spec = {"labels": {str(k): f"class_{k}" for k in range(118)}, "modality": {"0": "CT"},
            "training": [{"image": str(ct_dir / "dicom"), "label": str(ct_dir / "example_seg_dicom.nii.gz")}]}
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    dataset = load_dataset(tmp_path)
    assert dataset.training[0]["case"] == "dicom"
    assert check_cases(dataset.training, num_classes=118) == []  # LAS label on the LPS series: the same grid
    assert median_spacing(dataset.training) == (0.9766, 0.9766, 2.0)
    problems = check_cases(dataset.training, num_classes=100)
    assert len(problems) == 1 and "label values [100, 101, 102, 103, 109] are outside" in problems[0]
    # the training chain with LoadVolumed in front (the one-line change transforms.py needs) aligns the pair
    prep = Preprocessing(None, "RAS", "none", (0, 1), False, 3)
    chain = mt.Compose([LoadVolumed(["image", "label"])] + preprocessing(prep, load=False))
    case = chain(dict(dataset.training[0]))
    image, label = case["image"][0].numpy(), case["label"][0].numpy()
    assert 40 < image[label == 5].mean() < 150


def test_nnunet_folder_of_nrrd_files(tmp_path):
    from medseg_attn.segmentation.data.datasets import check_cases, load_dataset

    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    labels = np.zeros((8, 9, 6), np.uint8)
    labels[2:5, 3:6, 1:4] = 2
    for array, path in ((ramp((8, 9, 6)).astype(np.int16), tmp_path / "imagesTr" / "a_0000.nrrd"),
                        (labels, tmp_path / "labelsTr" / "a.nrrd")):
        image = sitk.GetImageFromArray(np.transpose(array, (2, 1, 0)))
        image.SetSpacing((0.8, 0.8, 2.0))
        sitk.WriteImage(image, str(path))
    dataset = load_dataset(tmp_path)
    assert dataset.labels == {0: "background", 1: "label_1", 2: "label_2"}
    assert check_cases(dataset.training, num_classes=3) == []
