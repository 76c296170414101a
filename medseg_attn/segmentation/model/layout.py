"""THE model-folder layout: a run, a cross-validation run (its folds, and the postprocessing its CV chose).

Layout (written by :mod:`medseg_attn.segmentation.workflows.crossval`)::

    RUN/cv.json                 folds, seed, dataset
    RUN/splits.json             every fold's training and validation cases (patients never cross folds)
    RUN/config.yaml             the configuration every fold trains with
    RUN/plan.json               the plan every fold trains with (the first fold's)
    RUN/run.json                how the run was made (io/manifest.py); RUN/cv/run.json likewise for ``cv``
    RUN/fold_<k>/               a normal run folder per fold (checkpoints/best.pt, plan.json, split.json, ...)
    RUN/fold_<k>/finished.json  written when fold k's training ended
    RUN/cv/                     out-of-fold predictions, metrics per fold and pooled, summary (``medseg-attn cv``)
    RUN/postprocessing.json     per class: keep the largest connected component, or remove components below a
                                size (each chosen where it raised the out-of-fold Dice)

``predict --model RUN`` ensembles the folds (their class probabilities averaged) and applies the postprocessing.
"""

from __future__ import annotations

import json
from pathlib import Path

from medseg_attn.errors import UserError
from medseg_attn.segmentation.measures.postprocessing import ClassPostprocessing, parse_postprocessing

__all__ = ["cv_members", "fold_count", "fold_dir", "fold_states", "is_cv_run", "read_cv_record",
           "read_postprocessing"]


def is_cv_run(path: str | Path) -> bool:
    """Whether ``path`` is a cross-validation run folder (it holds ``cv.json``)."""
    return (Path(path) / "cv.json").is_file()


def fold_dir(run: str | Path, fold: int) -> Path:
    return Path(run) / f"fold_{fold}"


def read_cv_record(run: str | Path) -> dict:
    """``RUN/cv.json``: folds, seed, dataset (and the fine-tuning source with its checksum).

    Raises:
        UserError: not readable as such a record (one line naming the file).
    """
    path = Path(run) / "cv.json"
    try:
        record = json.loads(path.read_text())
        int(record["folds"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path}: not a cross-validation run record ({type(error).__name__}: {error})") from None
    return record


def fold_count(run: str | Path) -> int:
    """How many folds the CV run ``run`` has (its ``cv.json``)."""
    return int(read_cv_record(run)["folds"])


def fold_states(run: str | Path) -> dict[int, str]:
    """Per fold of the CV run: 'finished' (``finished.json``), 'started' (a checkpoint, not finished: training or
    interrupted) or 'missing' (no checkpoint yet)."""
    run = Path(run)
    states = {}
    for fold in range(fold_count(run)):
        path = fold_dir(run, fold)
        trained = any((path / "checkpoints" / name).is_file() for name in ("best.pt", "last.pt"))
        states[fold] = "finished" if (path / "finished.json").is_file() else "started" if trained else "missing"
    return states


def cv_members(run: str | Path, folds: list[int] | None = None) -> list[Path]:
    """The run folders of the folds of ``run`` (all, or ``folds``), each with a trained checkpoint.

    Raises:
        ValueError: a fold outside the run, or one without a checkpoint yet.
    """
    run = Path(run)
    count = fold_count(run)
    chosen = list(range(count)) if folds is None else list(folds)
    members = []
    for fold in chosen:
        if not 0 <= fold < count:
            raise UserError(f"{run}: --folds {fold}: this cross-validation run has folds 0..{count - 1}")
        path = fold_dir(run, fold)
        if not any((path / "checkpoints" / name).is_file() for name in ("best.pt", "last.pt")):
            raise UserError(f"{path}: fold {fold} has no checkpoint yet; train it (medseg-attn train --output {run} "
                             f"--resume) or choose trained folds with --folds")
        members.append(path)
    return members


def read_postprocessing(run: str | Path, labels: dict[int, str] | None = None) -> dict[int, ClassPostprocessing]:
    """Per class index, what to do after the argmax ({} when the run chose nothing). Records written before
    ``min_size_ml`` existed read as largest-component choices only. ``labels``: the model's classes (see
    :func:`~medseg_attn.segmentation.measures.postprocessing.parse_postprocessing`)."""
    path = Path(run) / "postprocessing.json"
    if not path.is_file():
        return {}
    try:
        classes = json.loads(path.read_text())["classes"]
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path}: not a postprocessing record ({error})") from None
    return parse_postprocessing(classes, str(path), labels)
