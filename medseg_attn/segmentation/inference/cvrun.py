"""A cross-validation run folder as one model: its folds, and the postprocessing its CV chose.

Layout (written by :mod:`medseg_attn.segmentation.crossval`)::

    RUN/cv.json                 folds, seed, dataset
    RUN/splits.json             every fold's training and validation cases (patients never cross folds)
    RUN/config.yaml             the configuration every fold trains with
    RUN/fold_<k>/               a normal run folder per fold (checkpoints/best.pt, plan.json, split.json, ...)
    RUN/fold_<k>/finished.json  written when fold k's training ended
    RUN/cv/                     out-of-fold predictions, metrics per fold and pooled, summary (``medseg-attn cv``)
    RUN/postprocessing.json     per class: keep the largest connected component (chosen on the out-of-fold Dice)

``predict --model RUN`` ensembles the folds (their class probabilities averaged) and applies the postprocessing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["apply_postprocessing", "cv_members", "fold_dir", "is_cv_run", "keep_largest_component",
           "read_postprocessing"]


def is_cv_run(path: str | Path) -> bool:
    """Whether ``path`` is a cross-validation run folder (it holds ``cv.json``)."""
    return (Path(path) / "cv.json").is_file()


def fold_dir(run: str | Path, fold: int) -> Path:
    return Path(run) / f"fold_{fold}"


def cv_members(run: str | Path, folds: list[int] | None = None) -> list[Path]:
    """The run folders of the folds of ``run`` (all, or ``folds``), each with a trained checkpoint.

    Raises:
        ValueError: a fold outside the run, or one without a checkpoint yet.
    """
    run = Path(run)
    count = int(json.loads((run / "cv.json").read_text())["folds"])
    chosen = list(range(count)) if folds is None else list(folds)
    members = []
    for fold in chosen:
        if not 0 <= fold < count:
            raise ValueError(f"{run}: --folds {fold}: this cross-validation run has folds 0..{count - 1}")
        path = fold_dir(run, fold)
        if not any((path / "checkpoints" / name).is_file() for name in ("best.pt", "last.pt")):
            raise ValueError(f"{path}: fold {fold} has no checkpoint yet; train it (medseg-attn train --output {run} "
                             f"--resume) or choose trained folds with --folds")
        members.append(path)
    return members


def read_postprocessing(run: str | Path) -> dict[int, bool]:
    """Per class index: whether to keep only its largest connected component ({} when the run chose nothing)."""
    path = Path(run) / "postprocessing.json"
    if not path.is_file():
        return {}
    try:
        classes = json.loads(path.read_text())["classes"]
        return {int(index): bool(entry["largest_component"]) for index, entry in classes.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not a postprocessing record ({error})") from None


def keep_largest_component(labels: np.ndarray, index: int) -> np.ndarray:
    """``labels`` with every voxel of class ``index`` outside its largest connected component (26-/8-connected)
    set to background (0)."""
    mask = labels == index
    if not mask.any():
        return labels
    components, count = ndimage.label(mask, structure=np.ones((3,) * labels.ndim, dtype=bool))
    if count <= 1:
        return labels
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    result = labels.copy()
    result[mask & (components != int(sizes.argmax()))] = 0
    return result


def apply_postprocessing(labels: np.ndarray, choice: dict[int, bool] | dict[str, Any]) -> np.ndarray:
    """Apply a run's postprocessing choice (:func:`read_postprocessing`) to a label map."""
    for index, keep in sorted(choice.items()):
        if keep:
            labels = keep_largest_component(labels, int(index))
    return labels
