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

Reading: a contour's points are mapped onto the series grid (columns, rows, and the slice at its position along
the normal) and the pixel centres inside are filled, even-odd per ROI and slice.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg_attn.errors import UserError
from medseg_attn.io.dicom import DicomSeries
from medseg_attn.io.files import atomic_write
from medseg_attn.io.segments import resolve_colors, structure_code

logger = logging.getLogger(__name__)

__all__ = ["RTSTRUCT_SOP_CLASS", "RTStruct", "ROI", "check_rtstruct_source", "describe_rtstruct", "is_rtstruct",
           "read_rtstruct", "rtstruct_label_map", "slice_contours", "write_rtstruct"]

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"  # RT Structure Set Storage
STUDY_COMPONENT_CLASS = "1.2.840.10008.3.1.2.3.1"  # what RT Referenced Study Sequence items name (PS3.3 C.8.8.5)
EDGE_TOLERANCE = 1e-3  # pixels: a contour may touch the image's outer edge (half a pixel beyond the centres)


# ---------------------------------------------------------------------------------------------------- writing


def check_rtstruct_source(series: DicomSeries) -> None:
    """Raise UserError (one line) when an RTSTRUCT cannot reference this series."""
    where = series.files[0] if series.multiframe else series.folder
    if series.missing_uids:
        raise UserError(f"{where}: the series has blank {', '.join(series.missing_uids)} (anonymised?); an RTSTRUCT "
                        f"must reference them, so it cannot be written (use --output-format nifti)")
    if series.multiframe:
        raise UserError(f"{where}: RTSTRUCT output for a multi-frame source file is not supported; use "
                        f"--output-format nifti")
    if series.problems and not series.resamplable:
        raise UserError(series.problems[0])
    if series.problems:
        raise UserError(f"{where}: the series was resampled onto a regular grid ({series.problems[0]}); RTSTRUCT "
                        f"contours must lie on the source slices, use --output-format nifti")


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


# ---------------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ROI:
    """One ROI of a structure set: number, name, colour, and its closed planar contours ((N, 3) mm each)."""

    number: int
    name: str
    color: tuple[int, ...] | None
    contours: tuple[np.ndarray, ...]
    other_contours: int = 0  # POINT / OPEN_PLANAR ... contours (not areas; ignored when rasterising)
    code: str = ""  # the identification code's meaning, when given
    images: tuple[str, ...] = ()  # the SOP instance each closed contour references ('' when none)


@dataclass(frozen=True)
class RTStruct:
    """What a structure set holds and references."""

    path: Path
    label: str
    frame_of_reference_uids: tuple[str, ...]
    study_uid: str
    series_uids: tuple[str, ...]  # the image series its contours are drawn on
    image_uids: frozenset[str]  # the SOP instances its contours reference
    rois: tuple[ROI, ...]


def is_rtstruct(path: str | Path) -> bool:
    """A file holding a DICOM RT Structure Set (by SOP class or modality)."""
    import pydicom

    path = Path(path)
    if not path.is_file():
        return False
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "Modality"])
    except Exception:  # pydicom raises many kinds for non-DICOM files
        return False
    return str(header.get("SOPClassUID", "")) == RTSTRUCT_SOP_CLASS or header.get("Modality", "") == "RTSTRUCT"


def read_rtstruct(path: str | Path) -> RTStruct:
    """Read a structure set's references and contours.

    Raises:
        UserError: not a readable RTSTRUCT file, or a contour without a multiple of three coordinates.
    """
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as error:  # pydicom raises many kinds for broken files
        raise UserError(f"{path}: not a readable DICOM file ({type(error).__name__}: {error})") from None
    if str(ds.get("SOPClassUID", "")) != RTSTRUCT_SOP_CLASS and ds.get("Modality", "") != "RTSTRUCT":
        raise UserError(f"{path}: not an RT Structure Set (modality {ds.get('Modality', '?')})")
    frames, series_uids, images = [], [], set()
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        frames.append(str(frame.get("FrameOfReferenceUID", "")))
        for study in frame.get("RTReferencedStudySequence", []):
            for referenced in study.get("RTReferencedSeriesSequence", []):
                series_uids.append(str(referenced.get("SeriesInstanceUID", "")))
                images |= {str(i.ReferencedSOPInstanceUID) for i in referenced.get("ContourImageSequence", [])
                           if "ReferencedSOPInstanceUID" in i}
    names = {int(r.ROINumber): str(r.get("ROIName", "") or "") for r in ds.get("StructureSetROISequence", [])}
    codes = {}
    for observation in ds.get("RTROIObservationsSequence", []):
        found = observation.get("RTROIIdentificationCodeSequence")
        if found and "ReferencedROINumber" in observation:
            codes[int(observation.ReferencedROINumber)] = str(found[0].get("CodeMeaning", ""))
    rois = []
    for item in ds.get("ROIContourSequence", []):
        number = int(item.ReferencedROINumber)
        closed, other, on = [], 0, []
        for contour in item.get("ContourSequence", []):
            if str(contour.get("ContourGeometricType", "")) != "CLOSED_PLANAR":
                other += 1
                continue
            data = np.asarray([float(v) for v in contour.get("ContourData", [])], dtype=np.float64)
            if data.size == 0 or data.size % 3:
                raise UserError(f"{path}: ROI {names.get(number, number)!r} has a contour of {data.size} "
                                f"coordinate(s), not (x, y, z) points")
            closed.append(data.reshape(-1, 3))
            refs = [str(i.ReferencedSOPInstanceUID) for i in contour.get("ContourImageSequence", [])
                    if "ReferencedSOPInstanceUID" in i]
            images |= set(refs)
            on.append(refs[0] if refs else "")
        color = tuple(int(v) for v in item.ROIDisplayColor) if "ROIDisplayColor" in item else None
        rois.append(ROI(number, names.get(number, f"ROI {number}"), color, tuple(closed), other, codes.get(number, ""),
                        tuple(on)))
    listed = {roi.number for roi in rois}
    rois += [ROI(number, name, None, ()) for number, name in names.items() if number not in listed]
    return RTStruct(path, str(ds.get("StructureSetLabel", "") or ""), tuple(frames),
                    str(ds.get("StudyInstanceUID", "") or ""), tuple(dict.fromkeys(series_uids)), frozenset(images),
                    tuple(sorted(rois, key=lambda r: r.number)))


def describe_rtstruct(path: str | Path) -> list[str]:
    """What ``medseg-attn inspect`` prints for an RTSTRUCT: references, then each ROI with its contour count."""
    structure = read_rtstruct(path)
    lines = ["format: DICOM RT Structure Set (pydicom)",
             f"structure set label: {structure.label or '(none)'}",
             f"study: {structure.study_uid or '(blank)'}",
             f"frame of reference: {', '.join(structure.frame_of_reference_uids) or '(none)'}",
             f"referenced series: {', '.join(structure.series_uids) or '(none)'} ({len(structure.image_uids)} "
             f"image(s))",
             f"ROIs: {len(structure.rois)}"]
    for roi in structure.rois:
        planes = len(set(roi.images))
        extra = f", {roi.other_contours} other contour(s)" if roi.other_contours else ""
        color = f", colour {list(roi.color)}" if roi.color else ""
        code = f", code '{roi.code}'" if roi.code else ""
        lines.append(f"  {roi.number}: {roi.name!r}: {len(roi.contours)} closed contour(s) on {planes} image(s)"
                     f"{extra}{color}{code}")
    return lines


def _fill(roi: ROI, series: DicomSeries, where: Path) -> np.ndarray:
    """The ROI's mask (columns, rows, slices) on the series grid: pixel centres inside its contours, even-odd."""
    from matplotlib.path import Path as Polygon

    direction = np.asarray(series.direction).reshape(3, 3)
    origin = np.asarray(series.origin)
    dx, dy = series.pixel_spacing
    positions = np.asarray(series.positions)
    step = series.spacing or 1.0
    mask = np.zeros((series.columns, series.rows, series.slices), dtype=bool)
    for points in roi.contours:
        relative = points - origin
        column, row = relative @ direction[:, 0] / dx, relative @ direction[:, 1] / dy
        along = float(np.mean(points @ direction[:, 2]))
        k = int(np.argmin(np.abs(positions - along)))
        off_plane = float(np.abs(points @ direction[:, 2] - positions[k]).max())
        if off_plane > max(0.01, 0.1 * abs(step)):
            raise UserError(f"{where}: ROI {roi.name!r} has a contour at {along:.2f} mm along the slice normal, on "
                            f"no slice of series {series.uid} (nearest slice {off_plane:.2f} mm away); the "
                            f"structure set was drawn on other images")
        low, high = -0.5 - EDGE_TOLERANCE, np.array([series.columns, series.rows]) - 0.5 + EDGE_TOLERANCE
        if column.min() < low or row.min() < low or column.max() > high[0] or row.max() > high[1]:
            raise UserError(f"{where}: ROI {roi.name!r} has a contour outside the image (columns {column.min():.1f}"
                            f" to {column.max():.1f}, rows {row.min():.1f} to {row.max():.1f} of a "
                            f"{series.columns}x{series.rows} image, slice {k}); the structure set was drawn on "
                            f"other images")
        c0, c1 = max(int(np.floor(column.min())), 0), min(int(np.ceil(column.max())), series.columns - 1)
        r0, r1 = max(int(np.floor(row.min())), 0), min(int(np.ceil(row.max())), series.rows - 1)
        grid_c, grid_r = np.meshgrid(np.arange(c0, c1 + 1), np.arange(r0, r1 + 1), indexing="ij")
        inside = Polygon(np.stack([column, row], axis=1), closed=False).contains_points(
            np.stack([grid_c.ravel(), grid_r.ravel()], axis=1)).reshape(grid_c.shape)
        mask[c0:c1 + 1, r0:r1 + 1, k] ^= inside
    return mask


def check_references(structure: RTStruct, series: DicomSeries) -> None:
    """The structure set must be drawn on ``series``: its series UID (or its images) and frame of reference.

    Raises:
        UserError: one line naming both series.
    """
    uids = {str(getattr(h, "SOPInstanceUID", "")) for h in series.headers}
    on_series = series.uid in structure.series_uids or (uids and structure.image_uids and
                                                        structure.image_uids <= uids)
    if not on_series:
        named = ", ".join(structure.series_uids) or "no series"
        raise UserError(f"{structure.path}: the RTSTRUCT references series {named}, not the case's image series "
                        f"{series.uid} ({series.folder}); give the series it was drawn on")
    frame = str(series.headers[0].get("FrameOfReferenceUID", "") or "") if series.headers else ""
    if frame and structure.frame_of_reference_uids and frame not in structure.frame_of_reference_uids:
        raise UserError(f"{structure.path}: the RTSTRUCT's frame of reference "
                        f"{', '.join(structure.frame_of_reference_uids)} is not the series' {frame}")


def rtstruct_label_map(path: str | Path, series: DicomSeries, labels: Mapping[int, str],
                       regions: Any = None) -> np.ndarray:
    """Rasterise an RTSTRUCT onto ``series`` (headers kept) as a label map (columns, rows, slices), uint8.

    ROIs are matched to the classes ``labels`` (index -> name) by name (case and surrounding spaces ignored);
    ROIs without contours are skipped. Without ``regions`` two ROIs may not share a voxel; with ``regions``
    (:class:`~medseg_attn.segmentation.measures.regions.Regions`: ROIs named after regions, which may overlap)
    each region's ROI paints its value in ``regions_class_order`` order, later ones over earlier ones.

    Raises:
        UserError: the RTSTRUCT references another series, a contour lies outside the image or off its slices, an
            ROI name matches no class (or region), or ROIs overlap in a dataset of plain classes.
    """
    path = Path(path)
    structure = read_rtstruct(path)
    check_references(structure, series)
    if regions is not None:
        targets = {name.strip().lower(): (order, value) for order, (name, value)
                   in enumerate(zip(regions.names, regions.order, strict=True))}
        kind = "region"
    else:
        targets = {str(name).strip().lower(): (index, index) for index, name in labels.items() if index > 0}
        kind = "class"
    names = ", ".join(regions.names if regions is not None else [str(n) for i, n in sorted(labels.items()) if i])
    drawn = [roi for roi in structure.rois if roi.contours]
    for roi in drawn:
        if roi.name.strip().lower() not in targets:
            raise UserError(f"{path}: ROI {roi.name!r} matches no {kind} of the dataset ({names}); rename the ROI "
                            f"or add the {kind} to dataset.json's labels")
    dtype = np.uint8 if max([v for _, v in targets.values()] + [0]) <= 255 else np.int16
    out = np.zeros((series.columns, series.rows, series.slices), dtype=dtype)
    owner: dict[int, str] = {}
    filled = np.zeros(out.shape, dtype=bool)
    for roi in sorted(drawn, key=lambda r: targets[r.name.strip().lower()][0]):
        rank, value = targets[roi.name.strip().lower()]
        mask = _fill(roi, series, path)
        if regions is None:
            overlap = filled & mask
            if overlap.any():
                other = owner[int(out[overlap][0])]
                raise UserError(f"{path}: ROIs {other!r} and {roi.name!r} overlap in {int(overlap.sum())} voxel(s); "
                                f"a label map gives each voxel one class (declare overlapping structures as regions "
                                f"in dataset.json, or fix the contours)")
            filled |= mask
            owner[value] = roi.name
        out[mask] = value
    return out
