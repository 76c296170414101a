"""DICOM RT Structure Set (RTSTRUCT): written from a label map of a DICOM series, read back as contours or as a
label map on the series grid.

Libraries: the data set is built with pydicom (highdicom, which writes our DICOM-SEG, has no RT Structure Set
class), the contours of each slice come from contourpy (matplotlib's contour generator, a matplotlib dependency)
and contours are filled with ``matplotlib.path.Path.contains_points``. rt-utils was not taken: it needs OpenCV,
has had no release since 2023, sets attributes pydicom 3 deprecates, traces contours through pixel centres (a
one-voxel structure becomes a point) and cannot code a structure's concept. See docs/export.md.

Writing: slice ``k`` of the label map (x = column, y = row, as :mod:`medseg_attn.io.dicom` reads a series) is the
image ``series.files[k]``. Each class's mask on a slice is upsampled 2x (nearest) and contoured at 0.5, so every
contour runs along the pixels' edges (corners cut by a quarter pixel): a one-voxel structure gets a contour around
its pixel, a ring an outer and an inner contour, two islands two contours. Every contour is a CLOSED_PLANAR polygon
in patient coordinates (mm, LPS) that references its image; holes have no flag of their own: the contours of one
ROI on one slice are filled even-odd ("XOR"), as 3D Slicer (SlicerRT) and treatment planning systems fill them.

Reading (inspect, training labels): :mod:`medseg_attn.io.rtstruct_read`.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg_attn.errors import UserError
from medseg_attn.io.dicom import DicomSeries, check_derived_source
from medseg_attn.io.files import atomic_write
from medseg_attn.io.segments import resolve_colors, structure_code

logger = logging.getLogger(__name__)

__all__ = ["RTSTRUCT_SOP_CLASS", "check_rtstruct_source", "slice_contours", "write_rtstruct"]

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"  # RT Structure Set Storage
STUDY_COMPONENT_CLASS = "1.2.840.10008.3.1.2.3.1"  # what RT Referenced Study Sequence items name (PS3.3 C.8.8.5)



def check_rtstruct_source(series: DicomSeries) -> None:
    """Raise UserError (one line) when an RTSTRUCT cannot reference this series (:func:`check_derived_source`)."""
    check_derived_source(series, "an RTSTRUCT")


def slice_contours(mask: np.ndarray) -> list[np.ndarray]:
    """The closed contours of a 2D mask (rows, columns) as (N, 2) arrays of (column, row) pixel coordinates.

    The mask is upsampled 2x and contoured at 0.5 with contourpy, so the contours follow the pixels' edges (each
    convex corner cut by a quarter pixel) and every pixel centre lies on its own side, a quarter pixel or more
    away. Outer boundaries and holes are separate contours (fill them even-odd); points on straight runs are
    dropped.
    """
    import contourpy

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return []
    rows, columns = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, columns.min(), columns.max() + 1
    crop = np.pad(mask[r0:r1, c0:c1], 1)
    fine = np.repeat(np.repeat(crop, 2, axis=0), 2, axis=1).astype(np.float64)
    # fine sample u of the padded crop lies at pixel coordinate (u - 0.5) / 2 of the crop, minus the padding
    x = (np.arange(fine.shape[1]) - 0.5) / 2.0 - 1.0 + c0
    y = (np.arange(fine.shape[0]) - 0.5) / 2.0 - 1.0 + r0
    generator = contourpy.contour_generator(x, y, fine, name="serial", line_type=contourpy.LineType.Separate)
    contours = []
    for line in generator.lines(0.5):
        points = np.asarray(line, dtype=np.float64)
        if len(points) > 1 and np.allclose(points[0], points[-1]):
            points = points[:-1]
        points = _corners(points)
        if len(points) >= 3:
            contours.append(points)
    return contours


def _corners(points: np.ndarray) -> np.ndarray:
    """Drop the points of a closed polygon that lie on a straight run between their neighbours."""
    if len(points) < 4:
        return points
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    keep = np.abs(cross) > 1e-9
    return points[keep] if keep.sum() >= 3 else points


def _code_item(code: Any) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return item


def _number(value: float) -> str:
    """A DS value (16 characters at most): millimetres to 1e-4."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def write_rtstruct(labels: np.ndarray, series: DicomSeries, class_names: Mapping[int, str], path: str | Path,
                   description: str = "medseg-attn segmentation",
                   colors: Mapping[int, Sequence[int]] | None = None) -> tuple[Path, list[str]]:
    """Write ``labels`` (columns, rows, slices) of ``series`` as an RT Structure Set (atomically).

    One ROI per class with voxels, named after the class, with its colour and (as the DICOM-SEG writer) the SNOMED CT
    concept of a known structure as its identification code. A class without voxels gets no ROI (an empty ROI
    would read as a structure that was drawn): it is returned among the absent ones.

    Args:
        labels: class indices on the series grid, as :meth:`Predictor.predict` returns them for a DICOM input.
        series: the source series (its files in slice order; ``headers`` kept, else they are read).
        class_names: class index -> name (index 0, background, is never written).
        path: the output file (``.dcm``).
        colors: class index -> 0..255 RGB (default palette).

    Returns:
        The file written and the names of the classes left out (no voxel).

    Raises:
        UserError: blank UIDs, multi-frame or resampled source, or a label map not on the series grid.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import ImplicitVRLittleEndian, generate_uid

    from medseg_attn import __version__

    check_rtstruct_source(series)
    expected = (series.columns, series.rows, series.slices)
    if tuple(labels.shape) != expected:
        raise UserError(f"{path}: label map {labels.shape} is not on the grid {expected} of {series.folder}")
    headers = list(series.headers) or [pydicom.dcmread(f, stop_before_pixels=True) for f in series.files]
    first = headers[0]
    colors = resolve_colors(dict(class_names), colors)
    frame_uid = str(first.get("FrameOfReferenceUID", "") or "")
    if not frame_uid:
        raise UserError(f"{series.folder}: the series has no FrameOfReferenceUID; an RTSTRUCT must reference it "
                        f"(use --output-format nifti)")
    now = datetime.datetime.now()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_SOP_CLASS, generate_uid()
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription"):
        setattr(ds, keyword, first.get(keyword, "") or "")
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "RTSTRUCT", generate_uid(), _series_number(series)
    ds.SeriesDescription, ds.OperatorsName = description[:64], ""
    ds.SeriesDate, ds.SeriesTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.Manufacturer = ds.ManufacturerModelName = "medseg-attn"
    ds.SoftwareVersions, ds.InstanceNumber = __version__, 1
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, first.get("PositionReferenceIndicator", "")
    ds.StructureSetLabel, ds.StructureSetName = "medseg-attn", description[:64]
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.ApprovalStatus = "UNAPPROVED"  # an automatic segmentation, to be reviewed

    images = []
    for header in headers:
        image = Dataset()
        image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID = header.SOPClassUID, header.SOPInstanceUID
        images.append(image)
    referenced_series = Dataset()
    referenced_series.SeriesInstanceUID = series.uid
    referenced_series.ContourImageSequence = DicomSequence(images)
    study = Dataset()
    study.ReferencedSOPClassUID, study.ReferencedSOPInstanceUID = STUDY_COMPONENT_CLASS, ds.StudyInstanceUID
    study.RTReferencedSeriesSequence = DicomSequence([referenced_series])
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid
    frame.RTReferencedStudySequence = DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame])

    to_patient = _pixel_to_patient(series, headers)
    rois, contours_of, observations, absent = [], [], [], []
    for index in sorted(i for i in class_names if i > 0):
        name = str(class_names[index])
        contours = []
        for k in range(series.slices):
            for points in slice_contours(labels[:, :, k].T == index):
                contour = Dataset()
                contour.ContourImageSequence = DicomSequence([images[k]])
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.NumberOfContourPoints = len(points)
                contour.ContourNumber = len(contours) + 1
                contour.ContourData = [_number(v) for v in to_patient(points, k).reshape(-1)]
                contours.append(contour)
        if not contours:
            absent.append(name)
            continue
        number = len(rois) + 1
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = number, frame_uid, name[:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = f"medseg-attn {__version__}"[:64]
        rois.append(roi)
        item = Dataset()
        item.ROIDisplayColor = [int(v) for v in colors[index]]
        item.ContourSequence = DicomSequence(contours)
        item.ReferencedROINumber = number
        contours_of.append(item)
        category, concept = structure_code(name)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType, observation.ROIInterpreter = "ORGAN", ""
        observation.RTROIIdentificationCodeSequence = DicomSequence([_code_item(concept)])
        observation.SegmentedPropertyCategoryCodeSequence = DicomSequence([_code_item(category)])
        observations.append(observation)
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(contours_of)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ImplicitVRLittleEndian  # long contours: explicit VR caps a DS value at 64 KiB
    ds.file_meta = meta
    if absent:
        logger.info("%s: no voxel of %s; left out of the RTSTRUCT", path, ", ".join(absent))
    logger.info("%s: RTSTRUCT with %d ROI(s)", path, len(rois))
    return atomic_write(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True)), absent


def _series_number(series: DicomSeries) -> int:
    """The source's SeriesNumber + 2000 (not the DICOM-SEG's + 1000), or 2000."""
    try:
        return (int(series.series_number) + 2000) % 100000
    except ValueError:
        return 2000


def _pixel_to_patient(series: DicomSeries, headers: Sequence[Any]):
    """(points (N, 2) of (column, row), slice k) -> (N, 3) patient coordinates (mm), from slice k's own header."""
    direction = np.asarray(series.direction).reshape(3, 3)
    row_axis, column_axis = direction[:, 0], direction[:, 1]  # along a row (columns grow), along a column
    dx, dy = series.pixel_spacing

    def convert(points: np.ndarray, k: int) -> np.ndarray:
        origin = np.asarray([float(v) for v in headers[k].ImagePositionPatient])
        return origin + points[:, :1] * dx * row_axis + points[:, 1:2] * dy * column_axis

    return convert
