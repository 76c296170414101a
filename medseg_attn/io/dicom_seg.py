"""DICOM Segmentation (DICOM-SEG) output with highdicom: one segment per foreground class, on the source frames.

The label map of a DICOM series lies on the series' own grid (x = column, y = row, z = slice in position order,
as :mod:`medseg_attn.io.dicom` reads it), so slice ``k`` of the label map is the segmentation of source file
``series.files[k]``: highdicom copies each source frame's position and orientation into the SEG and references
its SOP Instance UID. Segment ``k`` is class ``k`` of the model, labelled with the class name, coded with the
SNOMED CT concept of a known structure (spleen, liver, grey matter, ...; generic tissue otherwise, see
:func:`medseg_attn.io.segments.structure_code`) and given the class colour as its recommended display colour.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medseg_attn.errors import UserError
from medseg_attn.io.dicom import DicomSeries, check_derived_source
from medseg_attn.io.files import atomic_write
from medseg_attn.io.segments import resolve_colors, structure_code

logger = logging.getLogger(__name__)

__all__ = ["check_seg_source", "write_dicom_seg"]


def check_seg_source(series: DicomSeries) -> None:
    """Raise UserError (one line) when a DICOM-SEG cannot reference this series (:func:`check_derived_source`)."""
    check_derived_source(series, "a DICOM-SEG")


def write_dicom_seg(labels: np.ndarray, series: DicomSeries, class_names: dict[int, str], path: str | Path,
                    description: str = "medseg-attn segmentation",
                    colors: dict[int, Sequence[int]] | None = None) -> Path:
    """Write ``labels`` (columns, rows, slices) of ``series`` as a binary DICOM-SEG file (atomically).

    Args:
        labels: class indices on the series grid, as :meth:`Predictor.predict` returns them for a DICOM input.
        series: the source series (its files in slice order).
        class_names: class index -> name; every index > 0 becomes a segment, empty ones included.
        path: the output file (``.dcm``).
        description: SeriesDescription of the SEG.
        colors: class index -> 0..255 RGB, the segments' recommended display colours (default palette).

    Raises:
        ValueError: blank UIDs, multi-frame or resampled source, or a label map not on the series grid.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from medseg_attn import __version__

    check_seg_source(series)
    expected = (series.columns, series.rows, series.slices)
    if tuple(labels.shape) != expected:
        raise UserError(f"{path}: label map {labels.shape} is not on the grid {expected} of {series.folder}")
    foreground = sorted(index for index in class_names if index > 0)
    if foreground != list(range(1, len(foreground) + 1)):
        raise UserError(f"{path}: class indices {foreground} must be 1..N for DICOM-SEG segment numbers")
    sources = list(series.headers) or [pydicom.dcmread(f, stop_before_pixels=True) for f in series.files]
    pixels = np.ascontiguousarray(np.transpose(labels, (2, 1, 0))).astype(np.uint8)  # (slices, rows, columns)
    algorithm = hd.AlgorithmIdentificationSequence(name="medseg-attn", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    colors = resolve_colors(class_names, colors)
    segments = []
    for index in foreground:
        category, concept = structure_code(str(class_names[index]))
        segments.append(hd.seg.SegmentDescription(
            segment_number=index, segment_label=str(class_names[index])[:64],
            segmented_property_category=category, segmented_property_type=concept,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*[int(v) for v in colors[index]])))
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=int(_series_number(series)),
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medseg-attn",
        manufacturer_model_name="medseg-attn", software_versions=__version__, device_serial_number="none",
        series_description=description[:64])
    logger.info("%s: DICOM-SEG with %d segment(s), %d frame(s)", path, len(segments), int(seg.NumberOfFrames))
    return atomic_write(path, lambda tmp: seg.save_as(tmp))


def _series_number(series: DicomSeries) -> int:
    """The source's SeriesNumber + 1000 (a number the SEG does not share with its source), or 1000."""
    try:
        return (int(series.series_number) + 1000) % 100000
    except ValueError:
        return 1000
