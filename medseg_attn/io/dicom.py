"""DICOM series as volumes: discovery, slice checks and reading with SimpleITK (GDCM).

A folder is searched for series with GDCM's series discovery (``ImageSeriesReader.GetGDCMSeriesIDs``, files
directly in the folder). Each series' headers are read with pydicom (no pixel data) and checked before any
pixel is decoded: one orientation, one matrix size, slices at distinct positions, an even spacing along the
slice normal (missing slices and uneven spacing are reported, or resampled onto a regular grid on request), no
gantry tilt. Slices are ordered by their position along the slice normal (``ImagePositionPatient`` projected on
``row x column`` of ``ImageOrientationPatient``), never by file name or InstanceNumber; this is also GDCM's
order, and the reader checks that the image it gets places every slice at its recorded position.

Pixels are decoded by SimpleITK's GDCM ImageIO (JPEG, JPEG-LS, JPEG 2000, RLE included) with each file's
RescaleSlope/RescaleIntercept applied (CT in HU). The volume is an ``sitk.Image`` in LPS world coordinates
with index axes (x = column, y = row, z = slice in position order); ``medseg_attn.io.readers`` turns it into
a MONAI array with a RAS affine.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg_attn.errors import UserError
from medseg_attn.io.formats import is_dicom_file  # the DICOM content test belongs to the format registry
from medseg_attn.io.limits import check_declared_size

logger = logging.getLogger(__name__)

__all__ = ["DicomSeries", "check_derived_source", "find_series", "is_dicom_file", "read_dicom", "read_series",
           "select_series", "series_affine", "series_label"]

# every slice of one series must agree on these (blank counts as a value: anonymised series stay readable)
IDENTITY_TAGS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "Modality")


@dataclass(frozen=True)
class DicomSeries:
    """One series of a folder (or one multi-frame file): its files in slice order and its geometry checks."""

    folder: Path
    uid: str  # SeriesInstanceUID, '' when blank (anonymised)
    files: tuple[Path, ...]  # ordered along the slice normal (ascending); one file for multi-frame
    description: str
    modality: str
    series_number: str
    slices: int
    rows: int
    columns: int
    multiframe: bool
    spacing: float | None  # median slice step along the normal (mm), None for one slice
    problems: tuple[str, ...]  # missing slices, uneven spacing, tilt ... (empty when the grid is regular)
    resamplable: bool  # the problems are only missing slices / uneven spacing
    positions: tuple[float, ...]  # slice positions along the normal (mm), ascending
    missing_uids: tuple[str, ...]  # Study/Series/SOP Instance and SOP Class UIDs that are blank
    origin: tuple[float, ...] = (0.0, 0.0, 0.0)  # LPS position of the first slice (ascending order)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)  # row, column, normal (columns)
    pixel_spacing: tuple[float, float] = (1.0, 1.0)  # (x = between columns, y = between rows) in mm
    # the files' headers (pydicom, no pixels) in ``files`` order, kept so that writers referencing the series
    # (DICOM-SEG) never read them again
    headers: tuple = field(default=(), repr=False, compare=False)

    @property
    def name(self) -> str:
        """``folder`` for the folder's only series; callers add the UID when a folder holds several."""
        return self.folder.name if not self.multiframe else self.files[0].name


def series_label(series: DicomSeries) -> str:
    """Human description: UID, description, modality and size."""
    uid = series.uid or "(blank SeriesInstanceUID)"
    return (f"{uid} '{series.description}' {series.modality} {series.slices} slice(s) "
            f"{series.columns}x{series.rows}")


@contextmanager
def _quiet_itk():
    """ITK prints warnings (e.g. 'Non uniform sampling') to stderr; we check and report those ourselves."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _headers(files: list[Path]) -> list:
    import pydicom

    headers = []
    for path in files:
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception as error:  # pydicom raises many kinds for broken files
            raise UserError(f"{path}: not a readable DICOM file ({type(error).__name__}: {error})") from None
    return headers


def _frame_geometry(header, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(orientation (6,), positions (F, 3)) of a single- or multi-frame image."""
    frames = int(header.get("NumberOfFrames", 1) or 1)
    if frames > 1 and "PerFrameFunctionalGroupsSequence" in header:
        shared = header.get("SharedFunctionalGroupsSequence", [None])[0]
        positions, orientation = [], None
        for item in header.PerFrameFunctionalGroupsSequence:
            plane = item.get("PlanePositionSequence") or (shared.get("PlanePositionSequence") if shared else None)
            turn = item.get("PlaneOrientationSequence") or (
                shared.get("PlaneOrientationSequence") if shared else None)
            if not plane or not turn:
                raise UserError(f"{path}: multi-frame image without per-frame plane position/orientation")
            positions.append([float(v) for v in plane[0].ImagePositionPatient])
            orientation = [float(v) for v in turn[0].ImageOrientationPatient]
        return np.asarray(orientation), np.asarray(positions)
    if "ImageOrientationPatient" not in header or "ImagePositionPatient" not in header:
        raise UserError(f"{path}: no ImagePositionPatient/ImageOrientationPatient; not a volume slice")
    return (np.asarray([float(v) for v in header.ImageOrientationPatient]),
            np.asarray([[float(v) for v in header.ImagePositionPatient]] * frames))


def _check_positions(positions: np.ndarray, normal: np.ndarray, where: Path) -> tuple[list[str], bool, float | None]:
    """Problems of slice positions (F, 3) sorted along ``normal``: duplicates, gaps, uneven steps, tilt."""
    if len(positions) < 2:
        return [], True, None
    along = positions @ normal
    steps = np.diff(along)
    step = float(np.median(steps))
    tolerance = max(0.01, 0.01 * abs(step))
    duplicates = int(np.sum(steps < tolerance))
    if duplicates:
        return [f"{where}: {duplicates + 1} slices share a position along the slice normal (several acquisitions, "
                f"echoes or phases in one series?)"], False, step
    problems, resamplable = [], True
    stack = positions[-1] - positions[0]
    sideways = stack - (stack @ normal) * normal
    tilt = math.degrees(math.atan2(float(np.linalg.norm(sideways)), float(stack @ normal)))
    if tilt > 0.5:
        problems.append(f"{where}: gantry tilt of {tilt:.1f} degrees (the slices are shifted sideways along the "
                        f"stack); tilted series are not supported, correct the tilt first (e.g. dcm2niix)")
        resamplable = False
    gaps = np.flatnonzero(steps > 1.5 * step)
    if gaps.size:
        missing = int(sum(round(steps[i] / step) - 1 for i in gaps))
        first = int(gaps[0])
        problems.append(f"{where}: {missing} slice(s) missing: gap of {steps[first]:.3g} mm after slice {first} "
                        f"(at {along[first]:.2f} mm along the slice normal) where the spacing is {step:.3g} mm")
    elif np.abs(steps - step).max() > tolerance:
        problems.append(f"{where}: uneven slice spacing, {steps.min():.4g} to {steps.max():.4g} mm between "
                        f"neighbouring slices")
    return problems, resamplable, step


def _series_from_headers(folder: Path, uid: str, files: list[Path], headers: list, multiframe: bool
                         ) -> DicomSeries:
    where = files[0] if multiframe else folder
    mixed = _identity_problem(where, files, headers)
    sizes = {(int(h.get("Rows", 0) or 0), int(h.get("Columns", 0) or 0)) for h in headers}
    geometries = [_frame_geometry(h, f) for h, f in zip(headers, files, strict=True)]
    orientations = {tuple(np.round(g[0], 4)) for g in geometries}
    problems: list[str] = [mixed] if mixed else []
    if len(sizes) > 1:
        problems.append(f"{where}: slices of different sizes {sorted(sizes)} in one series")
    if len(orientations) > 1:
        problems.append(f"{where}: slices with {len(orientations)} different orientations in one series "
                        f"(a localizer mixed in?)")
    orientation = geometries[0][0]
    normal = np.cross(orientation[:3], orientation[3:])
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        problems.append(f"{where}: ImageOrientationPatient {orientation.tolist()} is not two orthogonal unit vectors")
    positions = np.concatenate([g[1] for g in geometries])
    order = np.argsort(positions @ normal, kind="stable")
    if not multiframe:
        files = [files[i] for i in order]
        headers = [headers[i] for i in order]
    positions = positions[order]
    resamplable = not problems
    if not problems:
        found, ok, step = _check_positions(positions, normal, where)
        problems += found
        resamplable = ok and not multiframe
    else:
        step = None
    first = headers[0]
    blank = [name for name in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
             if any(not str(h.get(name, "") or "").strip() for h in headers)]
    direction = np.stack([orientation[:3], orientation[3:], normal], axis=1)
    return DicomSeries(folder, uid, tuple(files), str(first.get("SeriesDescription", "") or ""),
                       str(first.get("Modality", "") or ""), str(first.get("SeriesNumber", "") or ""),
                       len(positions), int(first.get("Rows", 0) or 0), int(first.get("Columns", 0) or 0), multiframe,
                       step, tuple(problems), resamplable, tuple(float(v) for v in positions @ normal), tuple(blank),
                       tuple(float(v) for v in positions[0]), tuple(float(v) for v in direction.reshape(-1)),
                       _pixel_spacing(first, where), tuple(headers))


def _identity_problem(where: Path, files: list[Path], headers: list) -> str | None:
    """The first :data:`IDENTITY_TAGS` value that differs between slices (another patient, study, frame of
    reference or modality mixed into the series), or None."""
    for tag in IDENTITY_TAGS:
        values = [str(header.get(tag, "") or "").strip() for header in headers]
        for path, value in zip(files[1:], values[1:], strict=True):
            if value != values[0]:
                return (f"{where}: slices of one series differ in {tag}: {path.name} has {value[:64]!r} where "
                        f"{files[0].name} has {values[0][:64]!r}; a series must hold one patient, study, frame of "
                        f"reference and modality (remove the stray file)")
    return None


def _pixel_spacing(header, where: Path) -> tuple[float, float]:
    """(x, y) spacing: PixelSpacing is (between rows, between columns); enhanced files keep it in a group."""
    spacing = header.get("PixelSpacing")
    if spacing is None and "SharedFunctionalGroupsSequence" in header:
        measures = header.SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence")
        spacing = measures[0].get("PixelSpacing") if measures else None
    if spacing is None or len(spacing) != 2:
        raise UserError(f"{where}: no PixelSpacing; cannot place the voxels in millimetres")
    return float(spacing[1]), float(spacing[0])


def series_affine(series: DicomSeries) -> np.ndarray:
    """LPS voxel-to-world affine of the series grid from its headers (before decoding any pixel)."""
    step = series.spacing if series.spacing else 1.0
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(series.direction).reshape(3, 3) * np.array([*series.pixel_spacing, step])
    affine[:3, 3] = series.origin
    return affine


def _single_file(path: Path) -> DicomSeries:
    header = _headers([path])[0]
    frames = int(header.get("NumberOfFrames", 1) or 1)
    if frames < 2:
        raise UserError(f"{path}: a single DICOM slice is not a volume; give the folder holding its series")
    if "PixelData" not in header and "FloatPixelData" not in header and not _has_pixels(path):
        raise UserError(f"{path}: DICOM file without pixel data")
    return _series_from_headers(path.parent, str(header.get("SeriesInstanceUID", "") or ""), [path], [header], True)


def _has_pixels(path: Path) -> bool:
    import pydicom

    return "PixelData" in pydicom.dcmread(path, specific_tags=["PixelData"])


def find_series(folder: str | Path, keep_headers: bool = False) -> list[DicomSeries]:
    """Every image series whose files lie directly in ``folder`` (GDCM discovery), with header checks; with
    ``keep_headers`` each keeps its files' headers (for a writer that references them: memory grows with the
    number of slices, so a batch listing many series keeps none).

    Raises:
        FileNotFoundError: no such folder.
        ValueError: empty folder, or no DICOM image in it (the message lists what is there).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    if not entries:
        raise UserError(f"{folder}: empty folder, expected DICOM files of a series")
    with _quiet_itk():
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        listed = {uid: [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)]
                  for uid in uids}
    series = []
    for uid, files in listed.items():
        headers = _headers(files)
        images = [(f, h) for f, h in zip(files, headers, strict=True) if "Rows" in h and "SOPClassUID" in h
                  and ("ImagePositionPatient" in h or "PerFrameFunctionalGroupsSequence" in h)]
        if len(images) < len(files):
            logger.info("%s: series %s: %d file(s) without image geometry ignored", folder, uid or "''",
                        len(files) - len(images))
        multiframe = [(f, h) for f, h in images if int(h.get("NumberOfFrames", 1) or 1) > 1]
        single = [(f, h) for f, h in images if int(h.get("NumberOfFrames", 1) or 1) <= 1]
        for path, header in multiframe:
            series.append(_series_from_headers(folder, uid, [path], [header], True))
        if single:
            series.append(_series_from_headers(folder, uid, [f for f, _ in single], [h for _, h in single], False))
    if not series:
        others = [p.name for p in entries[:3]]
        more = f" and {len(entries) - 3} more" if len(entries) > 3 else ""
        raise UserError(f"{folder}: no DICOM image series in this folder (found {', '.join(others)}{more})")
    ignored = len(entries) - sum(len(s.files) for s in series)
    if ignored:
        logger.info("%s: %d file(s) that are not DICOM images ignored", folder, ignored)
    return series if keep_headers else [replace(s, headers=()) for s in series]


def select_series(path: str | Path, series_uid: str | None = None, keep_headers: bool = False) -> DicomSeries:
    """The series to read from a folder (or a multi-frame file); ``keep_headers``: see :func:`find_series`.

    Raises:
        ValueError: ``series_uid`` not there, or several series and none chosen (the message lists them).
    """
    path = Path(path)
    if path.is_file():
        series = [_single_file(path)]
    else:
        series = find_series(path, keep_headers)
    if series_uid is not None:  # '' picks the series with a blank SeriesInstanceUID
        chosen = [s for s in series if s.uid == series_uid]
        if not chosen:
            listing = "; ".join(series_label(s) for s in series)
            raise UserError(f"{path}: no series with SeriesInstanceUID {series_uid} (found: {listing})")
        series = chosen
    if len(series) > 1:
        listing = "; ".join(series_label(s) for s in series)
        raise UserError(f"{path}: holds {len(series)} series ({listing}); choose one with --series-uid")
    return series[0]


def read_series(series: DicomSeries, resample_uneven: bool = False) -> sitk.Image:
    """Decode a checked series into one ``sitk.Image`` (LPS, slices along the normal, rescale applied).

    Args:
        series: from :func:`find_series` / :func:`select_series`.
        resample_uneven: interpolate a series with missing slices or uneven spacing linearly onto a regular grid
            with the median slice step (otherwise such a series is an error).

    Raises:
        ValueError: the series has problems (first one named), or the decoded grid disagrees with the headers.
    """
    if series.problems and not (resample_uneven and series.resamplable):
        hint = "; use --resample-uneven to interpolate onto a regular grid" if series.resamplable else ""
        raise UserError(series.problems[0] + hint)
    check_declared_size(series.files[0] if series.multiframe else series.folder,
                        (series.columns, series.rows, series.slices), 2)
    try:
        with _quiet_itk():
            if series.multiframe:
                image = sitk.ReadImage(str(series.files[0]))
            else:
                reader = sitk.ImageSeriesReader()
                reader.SetFileNames([str(f) for f in series.files])
                image = reader.Execute()
    except RuntimeError as error:
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), "unknown error")
        raise UserError(f"{series.files[0]}: SimpleITK cannot decode this DICOM series ({reason[:200]})") from None
    if series.problems:
        logger.warning("%s; resampled onto a regular grid of %.3g mm slices", series.problems[0], series.spacing)
        return _resample_regular(image, np.asarray(series.positions), float(series.spacing))
    _check_grid(image, series)
    return image


def _check_grid(image: sitk.Image, series: DicomSeries) -> None:
    """Every slice of the decoded image must sit at its header's position along the normal."""
    if image.GetDimension() != 3 or image.GetSize()[2] != series.slices:
        raise UserError(f"{series.files[0]}: decoded {image.GetSize()} but the headers list {series.slices} slices")
    if series.slices < 2:
        return
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    normal = np.cross(direction[:, 0], direction[:, 1])
    along = np.array([image.TransformIndexToPhysicalPoint((0, 0, k)) for k in range(series.slices)]) @ normal
    expected = np.asarray(series.positions)
    if along[0] > along[-1]:  # multi-frame files may store frames top-down; the image says so (direction)
        along = along[::-1]
    tolerance = max(0.01, 0.01 * float(series.spacing or 1.0))
    if np.abs(along - expected).max() > tolerance:
        raise UserError(f"{series.files[0]}: the decoded grid does not place the slices at their positions "
                         f"(largest error {np.abs(along - expected).max():.3g} mm)")


def _resample_regular(image: sitk.Image, positions: np.ndarray, step: float) -> sitk.Image:
    """Linear interpolation along the slice normal from slices at ``positions`` onto a regular grid."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)  # (z, y, x) in position order
    count = int(round((positions[-1] - positions[0]) / step)) + 1
    targets = positions[0] + step * np.arange(count)
    upper = np.clip(np.searchsorted(positions, targets, side="left"), 1, len(positions) - 1)
    lower = upper - 1
    weight = np.clip((targets - positions[lower]) / (positions[upper] - positions[lower]), 0.0, 1.0)
    weight = weight[:, None, None].astype(np.float32)
    regular = (1 - weight) * array[lower] + weight * array[upper]
    out = sitk.GetImageFromArray(regular)
    spacing = image.GetSpacing()
    out.SetSpacing((spacing[0], spacing[1], step))
    out.SetOrigin(image.GetOrigin())
    out.SetDirection(image.GetDirection())
    return out


def read_dicom(path: str | Path, series_uid: str | None = None, resample_uneven: bool = False
               ) -> tuple[sitk.Image, DicomSeries]:
    """Read a DICOM folder (one series, or the one named by ``series_uid``) or a multi-frame DICOM file."""
    series = select_series(path, series_uid)
    return read_series(series, resample_uneven), series


def check_derived_source(series: DicomSeries, what: str) -> None:
    """Refuse, in one line, a series that ``what`` (an object that references its source images: "a DICOM-SEG",
    "an RTSTRUCT") cannot reference: blank UIDs, a multi-frame source file, or a series resampled onto a regular
    grid (the object must lie on the source slices).

    Raises:
        UserError: naming the series and the way out (``--output-format nifti``).
    """
    where = series.files[0] if series.multiframe else series.folder
    name = what.split(" ", 1)[1]
    if series.missing_uids:
        raise UserError(f"{where}: the series has blank {', '.join(series.missing_uids)} (anonymised?); {what} "
                        f"must reference them, so only NIfTI can be written (--output-format nifti)")
    if series.multiframe:
        raise UserError(f"{where}: {name} output for a multi-frame source file is not supported; use "
                        f"--output-format nifti")
    if series.problems and not series.resamplable:
        raise UserError(series.problems[0])
    if series.problems:
        raise UserError(f"{where}: the series was resampled onto a regular grid ({series.problems[0]}); {what} "
                        f"must lie on the source slices, use --output-format nifti")
