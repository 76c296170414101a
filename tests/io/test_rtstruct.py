"""RTSTRUCT written from a label map of a DICOM series and read back: contours (ring, islands, one voxel) filled
again independently of our reader, references to the series, and the one-line errors of a bad structure set."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg_attn.errors import UserError
from medseg_attn.io.describe import describe
from medseg_attn.io.dicom import select_series
from medseg_attn.io.rtstruct import slice_contours, write_rtstruct
from medseg_attn.io.rtstruct_read import is_rtstruct, rtstruct_label_map
from medseg_attn.segmentation.measures.regions import Regions

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dicom_factory import write_series  # noqa: E402

CLASSES = {0: "background", 1: "liver", 2: "lesion", 3: "dot", 4: "spleen"}


def phantom() -> np.ndarray:
    """(x, y, z) = (40, 32, 6): a ring with a hole (liver), two islands on one slice (lesion), one voxel (dot)."""
    labels = np.zeros((40, 32, 6), dtype=np.uint8)
    yy, xx = np.meshgrid(np.arange(32), np.arange(40))
    radius = np.hypot(xx - 15.0, yy - 15.0)
    for k in (1, 2, 3):
        labels[:, :, k][(radius <= 9) & (radius >= 4)] = 1  # a ring: the hole is background
    labels[30:35, 3:7, 2] = 2  # two islands of one structure on slice 2
    labels[30:34, 20:26, 2] = 2
    labels[36, 28, 4] = 3  # a single voxel
    return labels  # spleen (4) is never found


def write_ct(folder: Path, **kwargs) -> list[Path]:
    volume = np.random.default_rng(0).normal(0, 10, (40, 32, 6))
    direction = np.array([[1.0, 0, 0], [0, 0.8, -0.6], [0, 0.6, 0.8]])  # an oblique series
    return write_series(folder, volume, spacing=(0.8, 0.7, 2.5), origin=(-12.0, 30.0, 100.0),
                        direction=direction, **kwargs)


def crossing_number(xs: np.ndarray, ys: np.ndarray, columns: int, rows: int) -> np.ndarray:
    """(columns, rows) pixel centres inside a polygon by the crossing-number rule (a ray towards +x)."""
    cx, cy = np.meshgrid(np.arange(columns, dtype=float), np.arange(rows, dtype=float), indexing="ij")
    inside = np.zeros((columns, rows), dtype=bool)
    for (x0, y0), (x1, y1) in zip(zip(xs, ys, strict=True), zip(np.roll(xs, -1), np.roll(ys, -1), strict=True),
                                  strict=True):
        if y0 == y1:
            continue
        spans = (cy >= min(y0, y1)) & (cy < max(y0, y1))
        crossing = x0 + (cy - y0) * (x1 - x0) / (y1 - y0)
        inside ^= spans & (cx < crossing)
    return inside


def independent_fill(path: Path, series_folder: Path) -> dict[str, np.ndarray]:
    """Fill the contours by crossing numbers (even-odd: XOR of each contour's fill), from the files' own
    headers: nothing of medseg-attn's reader."""
    ds = pydicom.dcmread(path)
    slices = [pydicom.dcmread(f) for f in sorted(series_folder.iterdir())]
    by_uid = {s.SOPInstanceUID: k for k, s in enumerate(slices)}
    names = {r.ROINumber: r.ROIName for r in ds.StructureSetROISequence}
    masks = {}
    for item in ds.ROIContourSequence:
        mask = np.zeros((40, 32, 6), dtype=bool)
        for contour in item.ContourSequence:
            k = by_uid[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            header = slices[k]
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3) - np.asarray(
                header.ImagePositionPatient, dtype=float)
            orientation = np.asarray(header.ImageOrientationPatient, dtype=float)
            column = points @ orientation[:3] / float(header.PixelSpacing[1])
            row = points @ orientation[3:] / float(header.PixelSpacing[0])
            assert np.abs(points @ np.cross(orientation[:3], orientation[3:])).max() < 1e-3  # on its image
            mask[:, :, k] ^= crossing_number(column, row, 40, 32)
        masks[names[item.ReferencedROINumber]] = mask
    return masks


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_contours_of_a_ring_islands_and_one_pixel():
    ring = np.zeros((12, 12), bool)
    ring[2:10, 2:10] = True
    ring[5:7, 5:7] = False
    assert len(slice_contours(ring)) == 2  # outer boundary and hole
    single = np.zeros((5, 5), bool)
    single[2, 3] = True
    (square,) = slice_contours(single)
    assert square[:, 0].min() == pytest.approx(2.5) and square[:, 0].max() == pytest.approx(3.5)  # the pixel's edges
    assert square[:, 1].min() == pytest.approx(1.5) and square[:, 1].max() == pytest.approx(2.5)


def test_rtstruct_round_trip(tmp_path):
    files = write_ct(tmp_path / "ct")
    series = select_series(tmp_path / "ct", keep_headers=True)
    labels = phantom()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # written and read without a warning
        path, absent = write_rtstruct(labels, series, CLASSES, tmp_path / "case.rtstruct.dcm",
                                      colors={1: [200, 10, 10]})
        ds = pydicom.dcmread(path)
    assert absent == ["spleen"]  # never an empty ROI
    assert is_rtstruct(path) and ds.Modality == "RTSTRUCT"
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["liver", "lesion", "dot"]
    first = pydicom.dcmread(files[0])
    assert ds.StudyInstanceUID == first.StudyInstanceUID and ds.PatientID == first.PatientID
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == first.FrameOfReferenceUID
    referenced = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == first.SeriesInstanceUID
    uids = {pydicom.dcmread(f).SOPInstanceUID for f in files}
    assert {i.ReferencedSOPInstanceUID for i in referenced.ContourImageSequence} == uids
    assert list(ds.ROIContourSequence[0].ROIDisplayColor) == [200, 10, 10]
    assert ds.RTROIObservationsSequence[0].RTROIIdentificationCodeSequence[0].CodeMeaning == "Liver"
    lesion_contours = ds.ROIContourSequence[1].ContourSequence
    assert len(lesion_contours) == 2  # two islands, one slice
    assert all(c.ContourGeometricType == "CLOSED_PLANAR" for c in lesion_contours)

    filled = independent_fill(path, tmp_path / "ct")
    for index, name in ((1, "liver"), (2, "lesion"), (3, "dot")):
        truth = labels == index
        assert dice(filled[name], truth) >= 0.95 if truth.sum() > 10 else np.array_equal(filled[name], truth), name
    assert filled["dot"][36, 28, 4]
    assert not filled["liver"][15, 15, 2]  # the hole stays open

    back = rtstruct_label_map(path, series, CLASSES)  # our reader gives the label map back exactly
    assert np.array_equal(back, labels)
    text = "\n".join(describe(path))  # medseg-attn inspect
    assert "'liver': 6 closed contour(s) on 3 image(s)" in text and first.SeriesInstanceUID in text


def test_rtstruct_bad_inputs_one_line_each(tmp_path):
    write_ct(tmp_path / "ct")
    series = select_series(tmp_path / "ct", keep_headers=True)
    labels = phantom()
    path, _ = write_rtstruct(labels, series, CLASSES, tmp_path / "case.dcm")

    write_ct(tmp_path / "other")  # another series (other UIDs), same grid
    other = select_series(tmp_path / "other", keep_headers=True)
    with pytest.raises(UserError, match="references series .* not the case's image series"):
        rtstruct_label_map(path, other, CLASSES)

    with pytest.raises(UserError, match="ROI 'dot' matches no class of the dataset"):
        rtstruct_label_map(path, series, {0: "background", 1: "liver", 2: "lesion"})

    ds = pydicom.dcmread(path)
    data = [float(v) for v in ds.ROIContourSequence[2].ContourSequence[0].ContourData]
    orientation = np.asarray(pydicom.dcmread(series.files[0]).ImageOrientationPatient, dtype=float)
    shifted = np.asarray(data).reshape(-1, 3) + 20.0 * orientation[:3]  # 25 columns further right: outside
    ds.ROIContourSequence[2].ContourSequence[0].ContourData = [f"{v:.4f}" for v in shifted.reshape(-1)]
    ds.save_as(tmp_path / "outside.dcm")
    with pytest.raises(UserError, match="ROI 'dot' has a contour outside the image"):
        rtstruct_label_map(tmp_path / "outside.dcm", series, CLASSES)

    overlapping = labels.copy()
    overlapping[overlapping == 3] = 0
    path2, _ = write_rtstruct(overlapping, series, CLASSES, tmp_path / "a.dcm")
    ds = pydicom.dcmread(path2)
    ds.StructureSetROISequence[1].ROIName = "spleen"  # lesion contours copied onto the liver as 'spleen'
    ds.ROIContourSequence[1].ContourSequence = ds.ROIContourSequence[0].ContourSequence
    ds.save_as(tmp_path / "overlap.dcm")
    with pytest.raises(UserError, match="ROIs 'liver' and 'spleen' overlap in"):
        rtstruct_label_map(tmp_path / "overlap.dcm", series, CLASSES)
    regions = Regions(("liver", "spleen"), ((1, 2), (2,)), (1, 2))  # as regions they may overlap: painted in order
    painted = rtstruct_label_map(tmp_path / "overlap.dcm", series, {}, regions)
    assert np.array_equal(painted, np.where(labels == 1, 2, 0))
