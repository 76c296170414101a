"""Batch prediction that loses nothing: every case is tried, bad ones are reported and skipped.

Inputs are collected into cases by :mod:`medseg_attn.segmentation.workflows.inputs`. Each case's problem
(unreadable file, wrong dimensions, NaN voxels, an empty or non-DICOM folder ...) is
recorded and the batch goes on. ``OUT/report.csv`` lists every case (status, seconds, error) and
``OUT/failures.csv`` the failed ones; outputs are written atomically and existing ones are skipped unless
``overwrite``, so an interrupted batch is completed by running it again.

On request each case also gets its explanation maps on its own grid (``<case>_attention_<level>.nii.gz``,
``<case>_uncertainty.nii.gz``) and an overlay picture (``<case>_overlay.png``); with uncertainty, the report
gives each case's mean uncertainty (whole volume, and inside the predicted foreground) so a batch can be sorted
by how much to trust each case.

With a :class:`~medseg_attn.segmentation.qc.qc_report.Review` (the CLI always passes one) each case is also measured
(statistics per structure, checks against the model's plan, a thumbnail in ``OUT/qc/``) and the batch gets
``OUT/report.html``, its cases ranked for review (and ``statistics.csv`` with ``--statistics``).

The batch runs in stages: collect the cases, then per case plan its outputs (typed
:class:`~medseg_attn.segmentation.outputs.writers.Output` records), check it, skip it when done, infer, write
the outputs, review and record, then write the reports.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from medseg_attn.io import dicom
from medseg_attn.io.cases import ReadOptions
from medseg_attn.io.layout import OutputLayout
from medseg_attn.io.lock import OutputLock
from medseg_attn.io.manifest import check_same_model, recorded_run
from medseg_attn.io.tables import write_csv
from medseg_attn.segmentation.inference.predictor import Prediction, Predictor
from medseg_attn.segmentation.outputs.formats import case_formats, parse_output_formats, write_label_tables
from medseg_attn.segmentation.outputs.lesions import LesionOutputs
from medseg_attn.segmentation.outputs.writers import Explain, Output, OutputKind, plan_outputs, write_outputs
from medseg_attn.segmentation.qc.qc_report import Review
from medseg_attn.segmentation.workflows.inputs import CaseInput, check_output_dir, collect_cases

logger = logging.getLogger(__name__)

__all__ = ["CaseInput", "Explain", "OUTPUT_FORMATS", "REPORT_COLUMNS", "check_output_dir", "collect_cases",
           "predict_files"]

# and comma lists: see segmentation.outputs
OUTPUT_FORMATS = ("nifti", "dicom-seg", "seg-nrrd", "rtstruct", "both", "all")
REPORT_COLUMNS = ("case", "input", "output", "status", "seconds", "uncertainty_mean", "uncertainty_foreground_mean",
                  "absent_structures", "error")


@dataclass(frozen=True)
class _Settings:
    """What every case of one batch is asked for."""

    formats: tuple[str, ...]  # the label-map formats asked (see segmentation.outputs.formats)
    probabilities: bool = False
    overwrite: bool = False
    resample_uneven: bool = False
    volume_index: int | None = None
    explain: Explain = Explain()
    review: Review | None = None
    lesions: LesionOutputs | None = None  # the lesion structures' table, instance map and counts


@dataclass(frozen=True)
class CaseRecord:
    """What became of one case: its outputs, status ('ok', 'skipped (exists)', 'failed'), time, uncertainty
    means (formatted for the report), error and review measurements."""

    case: str
    input: str
    outputs: tuple[Output, ...]
    status: str = "ok"
    seconds: float = 0.0
    uncertainty_mean: str = ""
    uncertainty_foreground_mean: str = ""
    absent_structures: str = ""  # classes without a voxel, left out of the case's RTSTRUCT (';'-joined)
    error: str = ""
    review: dict[str, Any] | None = None

    def row(self) -> dict[str, Any]:
        """The record as :func:`predict_files` returns it: the :data:`REPORT_COLUMNS` (``output``: the paths
        joined by ';'), and ``review`` when the case was measured."""
        row = {"case": self.case, "input": self.input, "output": ";".join(str(o.path) for o in self.outputs),
               "status": self.status, "seconds": self.seconds, "uncertainty_mean": self.uncertainty_mean,
               "uncertainty_foreground_mean": self.uncertainty_foreground_mean,
               "absent_structures": self.absent_structures, "error": self.error}
        return row if self.review is None else row | {"review": self.review}


def _one_line(error: BaseException) -> str:
    """The message of the error that names the problem (MONAI wraps errors raised inside transforms)."""
    current: BaseException | None = error
    seen = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ValueError, OSError)):
            break
        current = current.__cause__ or current.__context__
    chosen = current or error
    text = " ".join(str(chosen).split()) or type(chosen).__name__
    return text if isinstance(chosen, (ValueError, OSError)) else f"{type(chosen).__name__}: {text}"


def write_reports(records: list[dict[str, Any]], output_dir: Path, review: Review | None = None) -> None:
    """``report.csv`` (every case) and ``failures.csv`` (failed cases; removed when none failed); with a
    ``review`` also ``report.html`` (and ``statistics.csv``)."""
    layout = OutputLayout(output_dir)
    extra = review.report_columns() if review is not None else ()  # lesion counts and volumes per lesion structure
    write_csv(layout.report_csv, [r | review.report_cells(r) for r in records] if extra else records,
              REPORT_COLUMNS + extra)
    if review is not None:
        review.write(records, output_dir)
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        write_csv(layout.failures_csv, failed, ("case", "input", "error"))
    else:
        layout.failures_csv.unlink(missing_ok=True)


def predict_files(
    predictor: Predictor,
    inputs: Sequence[str | Path | CaseInput],
    output_dir: str | Path,
    probabilities: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    output_format: str = "nifti",
    series_uid: str | None = None,
    resample_uneven: bool = False,
    volume_index: int | None = None,
    reports: bool = True,
    attention_maps: bool = False,
    attention_heads: bool = False,
    uncertainty: bool = False,
    review: Review | None = None,
    lock: bool = True,
    lesions: LesionOutputs | None = None,
) -> list[dict[str, Any]]:
    """Predict every case into ``output_dir``; a failing case is recorded and the others go on.

    Outputs per case: ``<case>.nii.gz`` (label map on the input's grid), ``<case>.seg.dcm`` (DICOM-SEG, for
    DICOM series with ``output_format`` 'dicom-seg' or 'both'), ``<case>.seg.nrrd`` (with 'seg-nrrd'),
    ``labels.itksnap.txt`` + ``labels.ctbl`` beside NIfTI maps, ``<case>_probabilities.nii.gz`` (on request);
    with ``attention_maps`` ``<case>_attention_<level>.nii.gz`` per attention level, with ``uncertainty``
    ``<case>_uncertainty.nii.gz``, and with either ``<case>_overlay.png``
    (:mod:`~medseg_attn.segmentation.outputs.writers`).

    Args:
        inputs: files, folders (see :func:`collect_cases`) or prepared :class:`CaseInput` items (whose output
            folder the caller has checked against them with :func:`check_output_dir`, as ``predict_batch`` does).
        output_format: 'nifti' (default), 'dicom-seg', 'seg-nrrd', a comma list, 'both' or 'all'
            (see :mod:`medseg_attn.segmentation.outputs.formats`).
        series_uid, resample_uneven, volume_index: see :class:`~medseg_attn.io.cases.ReadOptions`.
        reports: write ``report.csv`` / ``failures.csv`` (off when the caller merges several runs' records, as
            the CLI does for the ranks of a torchrun job).
        attention_maps, attention_heads, uncertainty: see :meth:`Predictor.predict`.
        review: measure each case and write ``report.html`` (see the module docstring); the record of each
            case done or skipped gets a ``review`` entry (statistics and plan flags).
        lesions: measure the lesions of the lesion structures before a case's files are written (the counts of
            the QC report), and write ``<case>_lesions.csv`` / ``<case>_instances.nii.gz`` as it asks
            (:class:`~medseg_attn.segmentation.outputs.lesions.LesionOutputs`).
        lock: hold ``output_dir/.medseg-attn.lock`` (:class:`~medseg_attn.io.lock.OutputLock`) for the batch, so
            a second run into the same folder waits for this one (off for the ranks of one torchrun job).

    Returns:
        One record per case: {"case", "input", "output", "status" ('ok', 'skipped (exists)', 'failed'),
        "seconds", "uncertainty_mean", "uncertainty_foreground_mean", "error"}; the same rows are written to
        ``report.csv`` (and failed ones to ``failures.csv``).

    Raises:
        ValueError: unknown output format, an output folder that would write into an input or that another
            model's predictions fill (without ``overwrite``), or attention maps asked of a model without attention.
    """
    from tqdm import tqdm

    formats = parse_output_formats(output_format)
    levels = tuple(predictor.attention_levels()) if attention_maps or attention_heads else ()
    settings = _Settings(formats, probabilities, overwrite, resample_uneven, volume_index,
                         Explain(levels, attention_heads, uncertainty), review, lesions)
    if review is not None and review.settings.max_foreground_uncertainty > 0 and not uncertainty:
        logger.warning("review setting max_foreground_uncertainty = %g is never checked in this batch: it needs "
                       "--uncertainty (uncertainty=True), which measures each case's foreground uncertainty",
                       review.settings.max_foreground_uncertainty)
    output_dir = Path(output_dir)
    paths = [i for i in inputs if not isinstance(i, CaseInput)]
    if paths:  # who collects the cases checks the output folder against them (predict_batch: the whole batch)
        cases = collect_cases(paths, predictor.in_channels, series_uid, predictor.channels)
        check_output_dir(cases, output_dir, paths)
    else:
        cases = list(inputs)
    provenance = predictor.provenance()  # another model's folder is refused unless overwrite (run.json names one)
    models = None if overwrite else provenance["paths"]
    _prepare_output_dir(output_dir, formats, predictor, models)
    records: list[dict[str, Any]] = []
    with OutputLock(output_dir) if lock else nullcontext(), recorded_run(output_dir, "predict",
                                                                         models=models) as manifest:
        manifest.add_model(**provenance)  # run.json: model, arithmetic, inputs, outcome
        if predictor.channels.missing:  # predict --channels: which sequences the inputs lacked
            manifest.update(channels={"given": list(predictor.channels.given_names),
                                      "filled": list(predictor.channels.missing)})
        for case in cases:
            manifest.add_input(case.files[0], name=case.name, error=case.error, series_uid=case.series_uid,
                               geometry=True, series=case.series)
        try:
            for case in tqdm(cases, desc="predict", unit="case", disable=not progress):
                records.append(_run_case(predictor, case, output_dir, settings).row())
        finally:  # an interrupted batch still reports the cases it did
            if reports:
                write_reports(records, output_dir, review)
            failed = sum(r["status"] == "failed" for r in records)
            manifest.update(cases={r["case"]: r["status"] for r in records}, output_format=output_format)
            manifest.outcome = f"{failed} of {len(records)} case(s) failed" if failed else None
    return records


def _prepare_output_dir(output_dir: Path, formats: tuple[str, ...], predictor: Predictor,
                        models: Sequence[str] | None) -> None:
    """Check the output folder's ``run.json`` against ``models``, create the folder, and write the label tables
    beside NIfTI maps."""
    if models is not None:
        check_same_model(output_dir, models)
    output_dir.mkdir(parents=True, exist_ok=True)
    if "nifti" in formats or "dicom-seg" in formats:  # ITK-SNAP / Slicer label tables beside the NIfTI maps
        write_label_tables(output_dir, predictor.labels, predictor.colors)


def _run_case(predictor: Predictor, case: CaseInput, output_dir: Path, settings: _Settings) -> CaseRecord:
    """One case, stage by stage: plan its outputs, check it, skip it when done, infer, write, review, record."""
    outputs = _plan_outputs(case, output_dir, settings)
    record = CaseRecord(case.name, str(case.files[0]), tuple(outputs))
    problem = _check(case, outputs) or _rtstruct_problem(case, settings, outputs)
    if problem:
        return _failed(record, problem)
    if all(o.path.exists() for o in outputs) and not settings.overwrite:
        return _skip(record, case, output_dir, settings)
    try:
        result = _infer(predictor, case, outputs, settings)
        if settings.lesions is not None:  # before any file: too many lesions for the instance map fails the case
            result.lesions = settings.lesions.measure(result, predictor, case.name)
        write_outputs(result, outputs, predictor, case.files[0], case.series_uid)
        measured = _review(result, case, output_dir, settings.review)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:  # a bad case must not end the batch; the reason goes to failures.csv
        logger.debug("%s failed", case.files[0], exc_info=True)
        return _failed(record, _one_line(error))
    logger.info("%s -> %s (%.1f s)", case.files[0], outputs[0].path, result.seconds)
    record = _record(record, result, measured)
    if any(o.kind is OutputKind.RTSTRUCT for o in outputs):  # what the RTSTRUCT left out (no empty ROI)
        absent = [str(name) for index, name in sorted(predictor.labels.items())
                  if index > 0 and not np.any(result.labels == index)]
        record = replace(record, absent_structures=";".join(absent))
    return record


def _plan_outputs(case: CaseInput, output_dir: Path, settings: _Settings) -> list[Output]:
    """The case's outputs: DICOM-SEG only for a DICOM series (NIfTI instead when nothing else is left)."""
    formats = case_formats(settings.formats, case.dicom)
    if "dicom-seg" in settings.formats and "dicom-seg" not in formats and "nifti" in formats:
        logger.info("%s: not a DICOM series; no DICOM-SEG (NIfTI instead)", case.files[0])
    lesions = settings.lesions
    return plan_outputs(output_dir, case.name, formats, settings.probabilities, settings.explain,
                        lesion_table=bool(lesions and lesions.table), instances=bool(lesions and lesions.instances))


def _rtstruct_problem(case: CaseInput, settings: _Settings, outputs: list[Output]) -> str | None:
    """An RTSTRUCT asked of an input that is not a DICOM series: one line; the case fails when nothing else was asked
    of it (otherwise the line is logged and the other formats are written)."""
    if case.dicom or "rtstruct" not in settings.formats:
        return None
    line = (f"{case.files[0]}: not a DICOM series; an RTSTRUCT references the DICOM series it is drawn on, so it is "
            f"written for DICOM series inputs only (use --output-format nifti or seg-nrrd for this input)")
    if any(o.kind in (OutputKind.NIFTI, OutputKind.SEG_NRRD) for o in outputs):
        logger.warning("%s", line)
        return None
    return line


def _check(case: CaseInput, outputs: list[Output]) -> str | None:
    """Why the case cannot run (found when it was collected, or an output that would replace its input)."""
    if case.error:
        return case.error
    inputs = {path.resolve() for path in case.files}
    if any(o.path.resolve() in inputs for o in outputs):
        return f"{outputs[0].path}: refusing to overwrite the input file"
    return None


def _failed(record: CaseRecord, message: str) -> CaseRecord:
    """A failed case: the one-line reason, logged and kept for ``failures.csv``."""
    logger.error("failed: %s", message)
    return replace(record, status="failed", error=message)


def _skip(record: CaseRecord, case: CaseInput, output_dir: Path, settings: _Settings) -> CaseRecord:
    """Every output exists (an earlier run): not predicted again; measured from the files when reviewing."""
    review = settings.review
    measured = review.skipped(case.name, case.files, case.series_uid, output_dir, settings.resample_uneven,
                              settings.volume_index) if review else None
    return replace(record, status="skipped (exists)", review=measured)


def _infer(predictor: Predictor, case: CaseInput, outputs: list[Output], settings: _Settings) -> Prediction:
    """The prediction on the input's grid, with what the outputs and the review need; a DICOM-SEG source is
    checked first (before the heavy work)."""
    series = case.series
    if case.dicom and any(o.kind in (OutputKind.DICOM_SEG, OutputKind.RTSTRUCT) for o in outputs):
        from medseg_attn.io.dicom_seg import check_seg_source
        from medseg_attn.io.rtstruct import check_rtstruct_source

        series = dicom.select_series(case.files[0], case.series_uid, keep_headers=True)  # the SEG references them
        for kind, check in ((OutputKind.DICOM_SEG, check_seg_source), (OutputKind.RTSTRUCT, check_rtstruct_source)):
            if any(o.kind is kind for o in outputs):
                check(series)
    options = ReadOptions(case.series_uid, settings.resample_uneven, settings.volume_index)
    loaded = predictor.read(case.files if len(case.files) > 1 else case.files[0], options, series)  # read once
    explain = settings.explain
    return predictor.predict(loaded, probabilities=settings.probabilities, attention_maps=bool(explain.levels),
                             attention_heads=explain.heads, uncertainty=explain.uncertainty,
                             keep_image=settings.review is not None,
                             keep_channels=bool(settings.lesions and settings.lesions.table))


def _review(result: Prediction, case: CaseInput, output_dir: Path, review: Review | None) -> dict[str, Any] | None:
    """The case's statistics and plan flags (and its thumbnail in ``OUT/qc/``) when the batch is reviewed."""
    return review.case(result, case.name, case.files[0], output_dir) if review is not None else None


def _record(record: CaseRecord, result: Prediction, measured: dict[str, Any] | None) -> CaseRecord:
    """A done case: its time, its mean uncertainty (whole volume, inside the foreground) and review."""
    means = {}
    if result.uncertainty is not None:
        mean, inside = result.uncertainty_means()
        means = {"uncertainty_mean": f"{mean:.6f}",
                 "uncertainty_foreground_mean": "" if np.isnan(inside) else f"{inside:.6f}"}
    return replace(record, seconds=round(result.seconds, 3), review=measured, **means)
