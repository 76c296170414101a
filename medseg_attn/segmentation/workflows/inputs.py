"""The ``--input`` items of a prediction batch as cases.

Inputs are files (NIfTI, NRRD, MetaImage, multi-frame DICOM), DICOM series folders and folders of either:

* a file with a volume suffix is a case named after the file (``case.nii.gz`` -> ``OUT/case.nii.gz``);
  multi-channel models group nnU-Net ``_0000``, ``_0001``, ... files into one case;
* a folder whose files are DICOM is a series case named after the folder; a folder holding several series gives
  one case per series, ``<folder>_<SeriesInstanceUID>`` (or only the one named by ``series_uid``);
* a folder of volume files gives one case per file, and each of its sub-folders is a DICOM case.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medseg_attn.errors import UserError
from medseg_attn.io import dicom
from medseg_attn.io.files import check_output_location, not_regular
from medseg_attn.io.volumes import case_name, is_image_file
from medseg_attn.segmentation.data.channels import InputChannels

logger = logging.getLogger(__name__)

__all__ = ["CaseInput", "check_output_dir", "collect_cases", "group_cases"]


@dataclass
class CaseInput:
    """One case of a batch: its name, its files (or DICOM folder), the series to read, or why it cannot run."""

    name: str
    files: list[Path]
    series_uid: str | None = None
    error: str | None = None
    dicom: bool = False
    notes: list[str] = field(default_factory=list)
    series: dicom.DicomSeries | None = None  # found when the folder was listed: its headers are not read again


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
        return [CaseInput(path.name, [path], series.uid or None, dicom=True, series=series)]
    cases = []
    uids = [s.uid for s in found]
    for index, series in enumerate(found):
        if uids.count(series.uid) > 1:  # e.g. a multi-frame file beside the slices of its own series
            cases.append(CaseInput(f"{path.name}_{index}", [path], error=f"{path}: {uids.count(series.uid)} series "
                                   f"share the SeriesInstanceUID {series.uid or '(blank)'}; put each in its own folder",
                                   dicom=True))
            continue
        cases.append(CaseInput(f"{path.name}_{series.uid or 'blank-uid'}", [path], series.uid, dicom=True,
                               series=series))
    logger.info("%s holds %d series; each is predicted as its own case: %s (choose one with --series-uid)", path,
                len(found), ", ".join(c.name for c in cases))
    return cases


def group_cases(paths: Sequence[str | Path], in_channels: int = 1, channels: InputChannels | None = None
                ) -> list[tuple[str, list[Path]]]:
    """Input files -> (case name, files) pairs; output names follow the inputs.

    A multi-channel model takes one file per channel, named nnU-Net style (``case_0000.nii.gz``,
    ``case_0001.nii.gz``, ...); they are grouped into one case named ``case``. For a single-channel model each
    file is a case named after the file; when *every* file ends in ``_0000`` (an nnU-Net imagesTs folder) that
    suffix is dropped, so ``case_0000.nii.gz`` gives ``case.nii.gz`` as in nnU-Net.

    Raises:
        ValueError: a multi-channel case misses channel files (``channels``: the missing ones named, and
            ``--channels`` offered).
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
            found = {case_name(p) for p in members}
            missing = [k for k, e in enumerate(expected) if e not in found]
            hint = ""
            if channels is not None and missing and len(missing) < in_channels:
                names = channels.given_names
                given = [names[k] for k in range(in_channels) if k not in missing]
                hint = (f"; channel {', '.join(names[k] for k in missing)} is missing: give its file, or predict "
                        f"with --channels {','.join(given)} to fill it as a missing sequence")
            raise UserError(f"{members[0]}: case {name!r} needs the files {', '.join(e + '.*' for e in expected)} "
                             f"(one per channel), found {', '.join(p.name for p in members)}{hint}")
        cases.append((name, members))
    return cases


def collect_cases(items: Sequence[str | Path], in_channels: int = 1, series_uid: str | None = None,
                  channels: InputChannels | None = None) -> list[CaseInput]:
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
        grouped = group_cases(volumes, in_channels, channels)
    except ValueError as error:
        raise UserError(str(error)) from None
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
        raise UserError(f"{', '.join(str(i) for i in items)}: no image files or DICOM series to predict")
    return cases


def check_output_dir(cases: Sequence[CaseInput], output_dir: str | Path, folders: Sequence[str | Path] = ()
                     ) -> None:
    """Refuse an output folder that is an existing file, an input's folder or lies inside an input folder
    (``folders`` too): :func:`medseg_attn.io.files.check_output_location`.

    Raises:
        ValueError: naming the output folder and the input.
    """
    check_output_location(output_dir, [*folders, *(path for case in cases for path in case.files)], folder=True)
