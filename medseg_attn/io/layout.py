"""THE names of the files of a prediction folder: every writer, report and summary takes them from here.

``OUT/`` holds, per case, the label map in each format asked for, the explanation maps, the overlay and the
statistics; for the batch ``report.csv``, ``failures.csv`` (when a case failed), ``report.html`` with its pictures
in ``qc/``, ``statistics.csv`` (with ``--statistics``; for models with lesion structures also
``lesion_statistics.csv`` and per case ``<case>_lesions.csv``), ``<case>_instances.nii.gz`` (``--instances``) and
``run.json`` (how the folder was made).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medseg_attn.io.manifest import MANIFEST_NAME

__all__ = ["LABEL_MAP_SUFFIXES", "OutputLayout"]

# the label-map formats of ``--output-format``, by name
LABEL_MAP_SUFFIXES = {"nifti": ".nii.gz", "dicom-seg": ".seg.dcm", "seg-nrrd": ".seg.nrrd",
                      "rtstruct": ".rtstruct.dcm"}


@dataclass(frozen=True)
class OutputLayout:
    """The files of the prediction folder ``root``."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # the batch
    @property
    def report_csv(self) -> Path:
        return self.root / "report.csv"

    @property
    def failures_csv(self) -> Path:
        return self.root / "failures.csv"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def statistics_csv(self) -> Path:
        return self.root / "statistics.csv"

    @property
    def lesion_statistics_csv(self) -> Path:
        """One row per lesion of every case (with ``--statistics``, for models with lesion structures)."""
        return self.root / "lesion_statistics.csv"

    @property
    def qc_dir(self) -> Path:
        return self.root / "qc"

    @property
    def volumes_png(self) -> Path:
        return self.qc_dir / "volumes.png"

    @property
    def run_json(self) -> Path:
        return self.root / MANIFEST_NAME

    # one case
    def label_map(self, case: str, fmt: str = "nifti") -> Path:
        """The label map of ``case`` in ``fmt`` ('nifti', 'dicom-seg', 'seg-nrrd', 'rtstruct')."""
        return self.root / f"{case}{LABEL_MAP_SUFFIXES[fmt]}"

    def probabilities(self, case: str) -> Path:
        return self.root / f"{case}_probabilities.nii.gz"

    def attention(self, case: str, level: str) -> Path:
        return self.root / f"{case}_attention_{level}.nii.gz"

    def uncertainty(self, case: str) -> Path:
        return self.root / f"{case}_uncertainty.nii.gz"

    def overlay(self, case: str) -> Path:
        return self.root / f"{case}_overlay.png"

    def case_statistics(self, case: str) -> Path:
        return self.root / f"{case}_statistics.json"

    def lesions(self, case: str) -> Path:
        """The per-lesion table of ``case``."""
        return self.root / f"{case}_lesions.csv"

    def instances(self, case: str) -> Path:
        """The instance map of ``case``: each lesion its own value (its number in the table)."""
        return self.root / f"{case}_instances.nii.gz"

    def thumbnail(self, case: str) -> Path:
        return self.qc_dir / f"{case}.png"
