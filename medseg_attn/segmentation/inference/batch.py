"""Batch prediction that loses nothing: every case is tried, bad ones are reported and skipped.

Inputs are files (NIfTI, NRRD, MetaImage, multi-frame DICOM), DICOM series folders and folders of either:

* a file with a volume suffix is a case named after the file (``case.nii.gz`` -> ``OUT/case.nii.gz``);
  multi-channel models group nnU-Net ``_0000``, ``_0001``, ... files into one case;
* a folder whose files are DICOM is a series case named after the folder; a folder holding several series gives
  one case per series, ``<folder>_<SeriesInstanceUID>`` (or only the one named by ``series_uid``);
* a folder of volume files gives one case per file, and each of its sub-folders is a DICOM case.

Each case's problem (unreadable file, wrong dimensions, NaN voxels, an empty or non-DICOM folder ...) is
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
:class:`~medseg_attn.segmentation.inference.writers.Output` records), check it, skip it when done, infer, write
the outputs, review and record, then write the reports.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medseg_attn.io import dicom
from medseg_attn.io.files import check_output_location, not_regular
from medseg_attn.io.lock import OutputLock
from medseg_attn.io.manifest import check_same_model, recorded_run
from medseg_attn.io.tables import write_csv
from medseg_attn.io.volumes import case_name, is_image_file
from medseg_attn.segmentation.inference.outputs import case_formats, parse_output_formats, write_label_tables
from medseg_attn.segmentation.inference.predictor import Prediction, Predictor
from medseg_attn.segmentation.inference.writers import Explain, Output, OutputKind, plan_outputs, write_outputs
from medseg_attn.segmentation.qc.qc_report import Review

logger = logging.getLogger(__name__)

__all__ = ["CaseInput", "Explain", "OUTPUT_FORMATS", "REPORT_COLUMNS", "check_output_dir", "collect_cases", "predict_files"]

OUTPUT_FORMATS = ("nifti", "dicom-seg", "seg-nrrd", "both", "all")  # and comma lists: see segmentation.outputs
REPORT_COLUMNS = ("case", "input", "output", "status", "seconds", "uncertainty_mean", "uncertainty_foreground_mean",
                  "error")


@dataclass
class CaseInput:
    """One case of a batch: its name, its files (or DICOM folder), the series to read, or why it cannot run."""

    name: str
    files: list[Path]
    series_uid: str | None = None
    error: str | None = None
    dicom: bool = False
    notes: list[str] = field(default_factory=list)


def _dicom_cases(path: Path, series_uid: str | None) -> list[CaseInput]:
    """One case per series of a DICOM folder (or the chosen series); a failed case when there is none."""
    try:
        found = dicom.find_series(path)
    except (ValueError, OSError) as error:
        return [CaseInput(path.name, [path], error=str(error), dicom=True)]
    if series_uid:
        chosen = [s for s in found if s.uid == series_uid]
        if not chosen:
            listing = "; ".join(dicom.series_label(s) for s in found)
            return [CaseInput(path.name, [path], series_uid, f"{path}: no series with SeriesInstanceUID "
                              f"{series_uid} (found: {listing})", dicom=True)]
        found = chosen
    if len(found) == 1:
        series = found[0]
        return [CaseInput(path.name, [path], series.uid or None, dicom=True)]
    cases = []
    uids = [s.uid for s in found]
    for index, series in enumerate(found):
        if uids.count(series.uid) > 1:  # e.g. a multi-frame file beside the slices of its own series
            cases.append(CaseInput(f"{path.name}_{index}", [path], error=f"{path}: {uids.count(series.uid)} series "
                                   f"share the SeriesInstanceUID {series.uid or '(blank)'}; put each in its own folder",
                                   dicom=True))
            continue
        cases.append(CaseInput(f"{path.name}_{series.uid or 'blank-uid'}", [path], series.uid, dicom=True))
    logger.info("%s holds %d series; each is predicted as its own case: %s (choose one with --series-uid)", path,
                len(found), ", ".join(c.name for c in cases))
    return cases


def group_cases(paths: Sequence[str | Path], in_channels: int = 1) -> list[tuple[str, list[Path]]]:
    """Input files -> (case name, files) pairs; output names follow the inputs.

    A multi-channel model takes one file per channel, named nnU-Net style (``case_0000.nii.gz``,
    ``case_0001.nii.gz``, ...); they are grouped into one case named ``case``. For a single-channel model each
    file is a case named after the file; when *every* file ends in ``_0000`` (an nnU-Net imagesTs folder) that
    suffix is dropped, so ``case_0000.nii.gz`` gives ``case.nii.gz`` as in nnU-Net.

    Raises:
        ValueError: a multi-channel case misses channel files.
    """
    files = [Path(p) for p in paths]
    if in_channels <= 1:
        strip = bool(files) and all(case_name(p).endswith("_0000") for p in files)
        return [(case_name(p, strip_channel=strip), [p]) for p in files]
    groups: dict[str, list[Path]] = {}
    for p in files:
        groups.setdefault(case_name(p, strip_channel=True), []).append(p)
    cases = []
    for name, members in groups.items():
        members = sorted(members, key=lambda p: case_name(p))
        expected = [f"{name}_{c:04d}" for c in range(in_channels)]
        if [case_name(p) for p in members] != expected:
            raise ValueError(f"{members[0]}: case {name!r} needs the files {', '.join(e + '.*' for e in expected)} "
                             f"(one per channel), found {', '.join(p.name for p in members)}")
        cases.append((name, members))
    return cases


def collect_cases(items: Sequence[str | Path], in_channels: int = 1, series_uid: str | None = None
                  ) -> list[CaseInput]:
    """Turn ``--input`` items into cases (see the module docstring); problems become failed cases.

    Raises:
        ValueError: nothing at all to predict.
    """
    volumes: list[Path] = []
    cases: list[CaseInput] = []
    for item in items:
        path = Path(item).expanduser()
        if not_regular(path):  # a dangling link or a device: reported, never dropped without a word
            cases.append(CaseInput(case_name(path), [path], error=not_regular(path)))
        elif not path.exists():
            cases.append(CaseInput(case_name(path), [path], error=f"{path}: input not found"))
        elif path.is_file():
            if is_image_file(path) or dicom.is_dicom_file(path):
                volumes.append(path)
            else:
                cases.append(CaseInput(case_name(path), [path], error=f"{path}: not an image file (expected NIfTI "
                                       f".nii/.nii.gz, NRRD, MetaImage .mha/.mhd or DICOM)"))
        else:
            entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
            cases += [CaseInput(case_name(p), [p], error=not_regular(p)) for p in entries if not_regular(p)]
            if any(dicom.is_dicom_file(p) for p in entries if p.is_file()):
                cases += _dicom_cases(path, series_uid)
                continue
            found = [p for p in entries if is_image_file(p)]
            folders = [p for p in entries if p.is_dir()]
            if not found and not folders:
                listing = ", ".join(p.name for p in entries[:3]) + (" ..." if len(entries) > 3 else "")
                reason = f"found {listing}" if entries else "empty folder"
                cases.append(CaseInput(path.name, [path], error=f"{path}: no image files or DICOM series ({reason})",
                                       dicom=True))
                continue
            ignored = [p.name for p in entries if p.is_file() and p not in found]
            if ignored:
                logger.warning("%s: %d file(s) that are not images ignored: %s", path, len(ignored),
                               ", ".join(ignored[:5]))
            volumes += found
            for folder in folders:
                cases += _dicom_cases(folder, series_uid)
    try:
        grouped = group_cases(volumes, in_channels)
    except ValueError as error:
        raise ValueError(str(error)) from None
    cases = [CaseInput(name, files) for name, files in grouped] + cases
    if in_channels > 1:
        for case in cases:
            if case.dicom and case.error is None:
                case.error = f"{case.files[0]}: the model expects {in_channels} channels; a DICOM series gives one"
    seen: dict[str, CaseInput] = {}
    for case in cases:
        if case.name in seen and case.error is None:
            case.error = f"{case.files[0]}: case name {case.name!r} is already used by {seen[case.name].files[0]}"
        seen.setdefault(case.name, case)
    if not cases:
        raise ValueError(f"{', '.join(str(i) for i in items)}: no image files or DICOM series to predict")
    return cases


def check_output_dir(cases: Sequence[CaseInput], output_dir: str | Path, folders: Sequence[str | Path] = ()
                     ) -> None:
    """Refuse an output folder that is an existing file, an input's folder or lies inside an input folder
    (``folders`` too): :func:`medseg_attn.io.files.check_output_location`.

    Raises:
        ValueError: naming the output folder and the input.
    """
    check_output_location(output_dir, [*folders, *(path for case in cases for path in case.files)], folder=True)


@dataclass(frozen=True)
class _Settings:
    """What every case of one batch is asked for."""

    formats: tuple[str, ...]  # the label-map formats asked (see segmentation.inference.outputs)
    probabilities: bool = False
    overwrite: bool = False
    resample_uneven: bool = False
    volume_index: int | None = None
    explain: Explain = Explain()
    review: Review | None = None


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
    error: str = ""
    review: dict[str, Any] | None = None

    def row(self) -> dict[str, Any]:
        """The record as :func:`predict_files` returns it: the :data:`REPORT_COLUMNS` (``output``: the paths
        joined by ';'), and ``review`` when the case was measured."""
        row = {"case": self.case, "input": self.input, "output": ";".join(str(o.path) for o in self.outputs),
               "status": self.status, "seconds": self.seconds, "uncertainty_mean": self.uncertainty_mean,
               "uncertainty_foreground_mean": self.uncertainty_foreground_mean, "error": self.error}
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
    write_csv(output_dir / "report.csv", records, REPORT_COLUMNS)
    if review is not None:
        review.write(records, output_dir)
    failed = [r for r in records if r["status"] == "failed"]
    failures = output_dir / "failures.csv"
    if failed:
        write_csv(failures, failed, ("case", "input", "error"))
    else:
        failures.unlink(missing_ok=True)


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
) -> list[dict[str, Any]]:
    """Predict every case into ``output_dir``; a failing case is recorded and the others go on.

    Outputs per case: ``<case>.nii.gz`` (label map on the input's grid), ``<case>.seg.dcm`` (DICOM-SEG, for
    DICOM series with ``output_format`` 'dicom-seg' or 'both'), ``<case>.seg.nrrd`` (with 'seg-nrrd'),
    ``labels.itksnap.txt`` + ``labels.ctbl`` beside NIfTI maps, ``<case>_probabilities.nii.gz`` (on request);
    with ``attention_maps`` ``<case>_attention_<level>.nii.gz`` per attention level, with ``uncertainty``
    ``<case>_uncertainty.nii.gz``, and with either ``<case>_overlay.png``
    (:mod:`~medseg_attn.segmentation.inference.writers`).

    Args:
        inputs: files, folders (see :func:`collect_cases`) or prepared :class:`CaseInput` items.
        output_format: 'nifti' (default), 'dicom-seg', 'seg-nrrd', a comma list, 'both' or 'all'
            (see :mod:`medseg_attn.segmentation.inference.outputs`).
        series_uid, resample_uneven, volume_index: see :meth:`Predictor.load`.
        reports: write ``report.csv`` / ``failures.csv`` (off when the caller merges several runs' records, as
            the CLI does for the ranks of a torchrun job).
        attention_maps, attention_heads, uncertainty: see :meth:`Predictor.predict`.
        review: measure each case and write ``report.html`` (see the module docstring); the record of each
            case done or skipped gets a ``review`` entry (statistics and plan flags).
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
                         Explain(levels, attention_heads, uncertainty), review)
    if review is not None and review.settings.max_foreground_uncertainty > 0 and not uncertainty:
        logger.warning("review setting max_foreground_uncertainty = %g is never checked in this batch: it needs "
                       "--uncertainty (uncertainty=True), which measures each case's foreground uncertainty",
                       review.settings.max_foreground_uncertainty)
    output_dir = Path(output_dir)
    paths = [i for i in inputs if not isinstance(i, CaseInput)]
    cases = collect_cases(paths, predictor.in_channels, series_uid) if paths else list(inputs)
    provenance = predictor.provenance()  # another model's folder is refused unless overwrite (run.json names one)
    models = None if overwrite else provenance["paths"]
    _prepare_output_dir(cases, output_dir, paths, formats, predictor, models)
    records: list[dict[str, Any]] = []
    with OutputLock(output_dir) if lock else nullcontext(), recorded_run(output_dir, "predict",
                                                                         models=models) as manifest:
        manifest.add_model(**provenance)  # run.json: model, arithmetic, inputs, outcome
        for case in cases:
            manifest.add_input(case.files[0], name=case.name, error=case.error, series_uid=case.series_uid,
                               geometry=True)
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


def _prepare_output_dir(cases: list[CaseInput], output_dir: Path, inputs: Sequence[str | Path],
                        formats: tuple[str, ...], predictor: Predictor, models: Sequence[str] | None) -> None:
    """Check the output folder against the inputs (and its ``run.json`` against ``models``), create it, and write
    the label tables beside NIfTI maps."""
    check_output_dir(cases, output_dir, inputs)
    if models is not None:
        check_same_model(output_dir, models)
    output_dir.mkdir(parents=True, exist_ok=True)
    if "nifti" in formats or "dicom-seg" in formats:  # ITK-SNAP / Slicer label tables beside the NIfTI maps
        write_label_tables(output_dir, predictor.labels, predictor.colors)


def _run_case(predictor: Predictor, case: CaseInput, output_dir: Path, settings: _Settings) -> CaseRecord:
    """One case, stage by stage: plan its outputs, check it, skip it when done, infer, write, review, record."""
    outputs = _plan_outputs(case, output_dir, settings)
    record = CaseRecord(case.name, str(case.files[0]), tuple(outputs))
    problem = _check(case, outputs)
    if problem:
        return _failed(record, problem)
    if all(o.path.exists() for o in outputs) and not settings.overwrite:
        return _skip(record, case, output_dir, settings)
    try:
        result = _infer(predictor, case, outputs, settings)
        write_outputs(result, outputs, predictor, case.files[0], case.series_uid)
        measured = _review(result, case, output_dir, settings.review)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:  # a bad case must not end the batch; the reason goes to failures.csv
        logger.debug("%s failed", case.files[0], exc_info=True)
        return _failed(record, _one_line(error))
    logger.info("%s -> %s (%.1f s)", case.files[0], outputs[0].path, result.seconds)
    return _record(record, result, measured)


def _plan_outputs(case: CaseInput, output_dir: Path, settings: _Settings) -> list[Output]:
    """The case's outputs: DICOM-SEG only for a DICOM series (NIfTI instead when nothing else is left)."""
    formats = case_formats(settings.formats, case.dicom)
    if "dicom-seg" in settings.formats and "dicom-seg" not in formats:
        logger.info("%s: not a DICOM series; no DICOM-SEG (NIfTI instead)", case.files[0])
    return plan_outputs(output_dir, case.name, formats, settings.probabilities, settings.explain)


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
    if case.dicom and any(o.kind is OutputKind.DICOM_SEG for o in outputs):
        from medseg_attn.io.dicom_seg import check_seg_source

        check_seg_source(dicom.select_series(case.files[0], case.series_uid))
    explain = settings.explain
    return predictor.predict(case.files if len(case.files) > 1 else case.files[0],
                             probabilities=settings.probabilities, series_uid=case.series_uid,
                             resample_uneven=settings.resample_uneven, volume_index=settings.volume_index,
                             attention_maps=bool(explain.levels), attention_heads=explain.heads,
                             uncertainty=explain.uncertainty, keep_image=settings.review is not None)


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
