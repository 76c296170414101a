"""Which label-map files a prediction writes (``--output-format``), and the label tables written beside them.

Formats: ``nifti`` (``<case>.nii.gz``), ``dicom-seg`` (``<case>.seg.dcm``, DICOM series inputs only; other inputs
fall back to NIfTI), ``seg-nrrd`` (``<case>.seg.nrrd``, a 3D Slicer segmentation with named, coloured segments),
``rtstruct`` (``<case>.rtstruct.dcm``, a DICOM RT Structure Set of contours, DICOM series inputs only; other inputs
get the other formats asked, and fail with one line when RTSTRUCT was the only one).
A comma list combines them (``nifti,seg-nrrd``); ``both`` is ``nifti,dicom-seg``, ``all`` every format.
Beside NIfTI label maps the folder gets ``labels.itksnap.txt`` (ITK-SNAP label descriptions) and
``labels.ctbl`` (a colour table for 3D Slicer), from the model's class names and colours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from medseg_attn.errors import UserError
from medseg_attn.io.segments import write_color_table, write_itksnap_labels

__all__ = ["DICOM_ONLY", "FORMATS", "parse_output_formats", "case_formats", "write_label_tables"]

FORMATS = ("nifti", "dicom-seg", "seg-nrrd", "rtstruct")
DICOM_ONLY = ("dicom-seg", "rtstruct")  # formats that reference the input's DICOM series
ALIASES = {"both": ("nifti", "dicom-seg"), "all": FORMATS}


def parse_output_formats(spec: str | Sequence[str]) -> tuple[str, ...]:
    """The formats named by ``spec`` ('nifti', 'both', 'nifti,seg-nrrd', 'all', ...) in canonical order.

    Raises:
        ValueError: an unknown format name.
    """
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    chosen: set[str] = set()
    for part in (p.strip() for p in parts):
        if part in ALIASES:
            chosen.update(ALIASES[part])
        elif part in FORMATS:
            chosen.add(part)
        else:
            raise UserError(f"output format {part!r}: expected {', '.join(FORMATS)}, a comma list of them, "
                             f"'both' (nifti,dicom-seg) or 'all'")
    return tuple(f for f in FORMATS if f in chosen)


def case_formats(formats: Sequence[str], dicom: bool) -> tuple[str, ...]:
    """The formats one case gets: DICOM-SEG and RTSTRUCT only for DICOM series (NIfTI instead of a DICOM-SEG when
    nothing else is left; nothing at all for RTSTRUCT alone, which the batch reports as the case's failure)."""
    if dicom:
        return tuple(formats)
    kept = tuple(f for f in formats if f not in DICOM_ONLY)
    return kept if "nifti" in kept or "dicom-seg" not in formats else ("nifti", *kept)


def write_label_tables(output_dir: Path, labels: Mapping[int, str], colors: Mapping[int, Sequence[int]]
                       ) -> list[Path]:
    """``labels.itksnap.txt`` and ``labels.ctbl`` in ``output_dir``."""
    return [write_itksnap_labels(output_dir / "labels.itksnap.txt", labels, colors),
            write_color_table(output_dir / "labels.ctbl", labels, colors)]
