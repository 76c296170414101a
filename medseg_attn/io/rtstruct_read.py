"""DICOM RT Structure Sets read: their references and contours (``medseg-attn inspect``), and rasterised onto the
image series they were drawn on as a label map (training labels).

A contour's points (patient coordinates, mm) are mapped onto the series grid (columns, rows, and the slice at its
position along the normal) and the pixel centres inside are filled with ``matplotlib.path.Path.contains_points``,
even-odd ("XOR") per ROI and slice: a contour inside another is a hole, as 3D Slicer (SlicerRT) and treatment
planning systems read them. Writing: :mod:`medseg_attn.io.rtstruct`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg_attn.errors import UserError
from medseg_attn.io.dicom import DicomSeries
from medseg_attn.io.rtstruct import RTSTRUCT_SOP_CLASS

logger = logging.getLogger(__name__)

__all__ = ["ROI", "RTStruct", "check_references", "describe_rtstruct", "is_rtstruct", "read_rtstruct",
           "rtstruct_label_map"]

EDGE_TOLERANCE = 1e-3  # pixels: a contour may touch the image's outer edge (half a pixel beyond the centres)

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
