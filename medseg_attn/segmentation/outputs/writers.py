"""The files of one predicted case, each a typed :class:`Output`, and the writer of each kind.

A case ``<case>`` gets, in this order: its label maps (``<case>.nii.gz``, ``<case>.seg.dcm``, ``<case>.seg.nrrd``,
``<case>.rtstruct.dcm``;
see :mod:`~medseg_attn.segmentation.outputs.formats`), ``<case>_probabilities.nii.gz`` on request, the
explanation maps on the input's grid (``<case>_attention_<level>.nii.gz`` per attention level,
``<case>_uncertainty.nii.gz``) and, with either map, ``<case>_overlay.png`` drawn from them; for models with
lesion structures, the per-lesion table ``<case>_lesions.csv`` (with ``--statistics``) and the instance map
``<case>_instances.nii.gz`` (with ``--instances``), from the lesions measured before any file was written
(:mod:`~medseg_attn.segmentation.outputs.lesions`).

What a file holds comes from its record's ``kind``, never from its name: a case named like a suffix
(``scan_probabilities``) or holding one (``ct_attention_up``) gets the same files as any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from medseg_attn.io import dicom
from medseg_attn.io.files import remove_stale_temporaries
from medseg_attn.io.layout import OutputLayout
from medseg_attn.io.nifti import write_nifti
from medseg_attn.io.segments import write_seg_nrrd
from medseg_attn.io.tables import write_csv
from medseg_attn.segmentation.inference.predictor import Prediction, Predictor

__all__ = ["Explain", "Output", "OutputKind", "plan_outputs", "write_output", "write_outputs"]


class OutputKind(str, Enum):
    """What one output file of a case holds."""

    NIFTI = "nifti"  # the label map as NIfTI
    DICOM_SEG = "dicom-seg"  # the label map as DICOM-SEG (DICOM series inputs)
    SEG_NRRD = "seg-nrrd"  # the label map as a 3D Slicer segmentation
    RTSTRUCT = "rtstruct"  # the label map as DICOM RT Structure Set contours (DICOM series inputs)
    PROBABILITIES = "probabilities"  # class probabilities, 4D NIfTI
    ATTENTION = "attention"  # the attention received at one level
    UNCERTAINTY = "uncertainty"  # normalised predictive entropy
    OVERLAY = "overlay"  # a PNG of the maps over three slices
    LESIONS = "lesions"  # one row per lesion of the lesion structures, CSV
    INSTANCES = "instances"  # each lesion its own value, uint16 NIfTI

    @property
    def is_map(self) -> bool:
        """An explanation map (written in a worker thread while the other outputs are written)."""
        return self in (OutputKind.ATTENTION, OutputKind.UNCERTAINTY)


@dataclass(frozen=True)
class Output:
    """One output file of a case: what it holds, where it goes, and for attention its level."""

    kind: OutputKind
    path: Path
    level: str | None = None

    def __post_init__(self) -> None:
        if (self.kind is OutputKind.ATTENTION) != (self.level is not None):
            raise ValueError(f"{self.path}: an attention output names its level, no other output has one "
                             f"(got kind {self.kind.value}, level {self.level!r})")


@dataclass(frozen=True)
class Explain:
    """Which explanation outputs a batch writes: attention maps (per level names, heads apart) and uncertainty."""

    levels: tuple[str, ...] = ()
    heads: bool = False
    uncertainty: bool = False

    @property
    def any(self) -> bool:
        return bool(self.levels) or self.uncertainty


def plan_outputs(output_dir: Path, name: str, formats: Sequence[str], probabilities: bool = False,
                 explain: Explain = Explain(), lesion_table: bool = False, instances: bool = False) -> list[Output]:
    """The outputs of case ``name`` in the order they are written (``formats``: the case's label-map formats,
    see :func:`~medseg_attn.segmentation.outputs.formats.case_formats`; ``lesion_table``, ``instances``: the
    per-lesion table and the instance map)."""
    layout = OutputLayout(output_dir)
    outputs = [Output(OutputKind(fmt), layout.label_map(name, fmt)) for fmt in formats]
    if probabilities:
        outputs.append(Output(OutputKind.PROBABILITIES, layout.probabilities(name)))
    outputs += [Output(OutputKind.ATTENTION, layout.attention(name, level), level) for level in explain.levels]
    if explain.uncertainty:
        outputs.append(Output(OutputKind.UNCERTAINTY, layout.uncertainty(name)))
    if lesion_table:
        outputs.append(Output(OutputKind.LESIONS, layout.lesions(name)))
    if instances:
        outputs.append(Output(OutputKind.INSTANCES, layout.instances(name)))
    if explain.any:
        outputs.append(Output(OutputKind.OVERLAY, layout.overlay(name)))  # last: drawn from the maps
    return outputs


def write_outputs(result: Prediction, outputs: Sequence[Output], predictor: Predictor, source: Path,
                  series_uid: str | None = None) -> None:
    """Write every output of a case (``source``, ``series_uid``: its input, for DICOM-SEG).

    The maps are gzip-compressed in worker threads (zlib releases the GIL) while the others are written.
    """
    for output in outputs:
        remove_stale_temporaries(output.path)  # temporary files of a killed run (never those of a live one)
    maps = [output for output in outputs if output.kind.is_map]
    with ThreadPoolExecutor(max_workers=2) if maps else nullcontext() as pool:
        jobs = [pool.submit(write_output, result, output, predictor, source, series_uid) for output in maps]
        for output in outputs:
            if not output.kind.is_map:
                write_output(result, output, predictor, source, series_uid)
        for job in jobs:
            job.result()  # re-raises a failed write


def write_output(result: Prediction, output: Output, predictor: Predictor, source: Path,
                 series_uid: str | None = None) -> None:
    """Write one output with the writer of its kind.

    Raises:
        ValueError: the prediction lacks what the output holds (e.g. probabilities not asked for).
    """
    kind, path = output.kind, output.path
    if kind is OutputKind.NIFTI:
        write_nifti(result.labels, path, affine=result.affine, reference=result.reference)
    elif kind is OutputKind.DICOM_SEG:
        from medseg_attn.io.dicom_seg import write_dicom_seg

        series = result.source.series if result.source and result.source.series else \
            dicom.select_series(source, series_uid)  # the series read for the prediction, else found again
        write_dicom_seg(result.labels, series, predictor.labels, path, colors=predictor.colors)
    elif kind is OutputKind.RTSTRUCT:  # classes without a voxel are left out (the report lists them)
        from medseg_attn.io.rtstruct import write_rtstruct

        series = result.source.series if result.source and result.source.series else \
            dicom.select_series(source, series_uid, keep_headers=True)
        write_rtstruct(result.labels, series, predictor.labels, path, colors=predictor.colors)
    elif kind is OutputKind.SEG_NRRD:
        write_seg_nrrd(result.labels, result.affine, predictor.labels, predictor.colors, path)
    elif kind is OutputKind.PROBABILITIES:  # (X, Y, Z, C) as uint8 with a scale factor (readers get [0, 1])
        write_nifti(np.moveaxis(_needed(result.probabilities, output), 0, -1), path, affine=result.affine,
                    reference=result.reference, unit_interval=True, intent="class probabilities")
    elif kind is OutputKind.ATTENTION:
        values = _needed((result.attention or {}).get(output.level), output)
        heads = values.ndim > result.labels.ndim  # (heads, *S) -> a 4D NIfTI (*S, heads)
        write_nifti(np.moveaxis(values, 0, -1) if heads else values, path, affine=result.affine,
                    reference=result.reference, unit_interval=True, description=f"attention received, {output.level}",
                    intent="per head" if heads else None)
    elif kind is OutputKind.UNCERTAINTY:
        write_nifti(_needed(result.uncertainty, output), path, affine=result.affine, reference=result.reference,
                    unit_interval=True, description="predictive entropy / log(classes)")
    elif kind is OutputKind.OVERLAY:
        _save_overlay(result, path)
    elif kind is OutputKind.LESIONS:
        lesions = _needed(result.lesions, output)
        write_csv(path, lesions.rows, lesions.columns)
    elif kind is OutputKind.INSTANCES:  # the label map's header and grid; uint16 (at most 65,535 lesions, checked)
        write_nifti(_needed(result.lesions, output).instances, path, affine=result.affine,
                    reference=result.reference, dtype=np.uint16, description="lesion instances")
    else:
        raise ValueError(f"{path}: no writer for outputs of kind {kind!r}")


def _needed(values: np.ndarray | None, output: Output) -> np.ndarray:
    """The prediction's values for ``output``; a one-line error when they were not predicted."""
    if values is None:
        what = output.kind.value + (f" {output.level}" if output.level else "")
        raise ValueError(f"{output.path}: the prediction holds no {what} to write")
    return values


def _save_overlay(result: Prediction, path: Path) -> None:
    """Three orthogonal slices with each map as heat (attention: mean over heads) and the prediction contours."""
    from medseg_attn.plots import save_map_overlay_png

    maps = {}
    if result.uncertainty is not None:
        maps["uncertainty"] = result.uncertainty
    for level, values in (result.attention or {}).items():
        maps[f"attention {level}"] = values.mean(0) if values.ndim > result.labels.ndim else values
    image = result.image if result.image is not None else np.zeros(result.labels.shape, np.float32)
    save_map_overlay_png(path, image, result.labels, maps, result.affine, title=result.case)
