"""Writes real DICOM files for the tests: CT series from arrays, with pydicom (uncompressed, explicit VR LE).

Not collected by pytest (no ``test_`` prefix); test modules put this folder on ``sys.path`` and import it.
Voxel arrays are in SimpleITK's index order (x = column, y = row, z = slice) and geometry is given the way
SimpleITK reports it (LPS origin and direction, spacing per index axis).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def _base(study_uid: str, series_uid: str, frame_uid: str, description: str, series_number: int) -> Dataset:
    ds = Dataset()
    today = datetime.date(2024, 1, 2).strftime("%Y%m%d")
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "PHANTOM1", "19700101", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "A1", "", "1"
    ds.Modality, ds.Manufacturer, ds.SeriesDescription = "CT", "medseg-attn tests", description
    ds.SeriesNumber, ds.PositionReferenceIndicator = series_number, ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.KVP = "120"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    return ds


def write_series(
    folder: str | Path,
    volume: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 2.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: np.ndarray | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    positions: Sequence[Sequence[float]] | None = None,
    names: Sequence[str] | None = None,
    instance_numbers: Sequence[int] | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    description: str = "test series",
    series_number: int = 1,
    skip: Sequence[int] = (),
) -> list[Path]:
    """Write ``volume`` (x, y, z) as one CT file per slice; stored values are ``(volume - intercept) / slope``.

    Args:
        positions: ImagePositionPatient of each slice (default: origin + k * spacing[2] * direction[:, 2]).
        names: file names per slice (default ``slice_000.dcm``...).
        instance_numbers: InstanceNumber per slice (default 1..N).
        skip: slice indices not written (a missing slice).

    Returns:
        The written files, in slice order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    study_uid, series_uid = study_uid or generate_uid(), series_uid or generate_uid()
    frame_uid = generate_uid()
    stored = np.round((np.asarray(volume, dtype=np.float64) - intercept) / slope).astype(np.int16)
    count = stored.shape[2]
    if positions is None:
        positions = [np.asarray(origin) + k * spacing[2] * direction[:, 2] for k in range(count)]
    written = []
    for k in range(count):
        if k in skip:
            continue
        ds = _base(study_uid, series_uid, frame_uid, description, series_number)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.InstanceNumber = int(instance_numbers[k]) if instance_numbers is not None else k + 1
        ds.ImagePositionPatient = [float(f"{v:.6f}") for v in positions[k]]
        ds.ImageOrientationPatient = [float(f"{v:.8f}") for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing (y), column spacing (x)
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # (rows, columns)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path = folder / (names[k] if names is not None else f"slice_{k:03d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written
