"""A cross-validation run folder as one model: its folds, and the postprocessing its CV chose.

Layout (written by :mod:`medseg_attn.segmentation.crossval`)::

    RUN/cv.json                 folds, seed, dataset
    RUN/splits.json             every fold's training and validation cases (patients never cross folds)
    RUN/config.yaml             the configuration every fold trains with
    RUN/fold_<k>/               a normal run folder per fold (checkpoints/best.pt, plan.json, split.json, ...)
    RUN/fold_<k>/finished.json  written when fold k's training ended
    RUN/cv/                     out-of-fold predictions, metrics per fold and pooled, summary (``medseg-attn cv``)
    RUN/postprocessing.json     per class: keep the largest connected component, or remove components below a
                                size (each chosen where it raised the out-of-fold Dice)

``predict --model RUN`` ensembles the folds (their class probabilities averaged) and applies the postprocessing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["ClassPostprocessing", "apply_postprocessing", "cv_members", "fold_dir", "is_cv_run",
           "keep_largest_component", "parse_postprocessing", "read_postprocessing", "remove_small_components",
           "voxel_ml"]


@dataclass(frozen=True)
class ClassPostprocessing:
    """What predict does to one class's voxels after the argmax (a CV run's choice, ``postprocessing.json``).

    ``largest_component``: keep only its largest connected component; ``min_size_ml``: remove its connected
    components smaller than this many ml (mm^2 / 1000 for 2D). Both off: nothing.
    """

    largest_component: bool = False
    min_size_ml: float | None = None

    @property
    def any(self) -> bool:
        return self.largest_component or self.min_size_ml is not None

    def describe(self) -> str:
        if self.largest_component:
            return "largest component kept"
        return f"components below {self.min_size_ml:g} ml removed" if self.min_size_ml is not None else "none"


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


def read_postprocessing(run: str | Path) -> dict[int, ClassPostprocessing]:
    """Per class index, what to do after the argmax ({} when the run chose nothing). Records written before
    ``min_size_ml`` existed read as largest-component choices only."""
    path = Path(run) / "postprocessing.json"
    if not path.is_file():
        return {}
    try:
        classes = json.loads(path.read_text())["classes"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a postprocessing record ({error})") from None
    return parse_postprocessing(classes, str(path))


def parse_postprocessing(classes: dict[str, Any], where: str) -> dict[int, ClassPostprocessing]:
    """The ``classes`` of a postprocessing record (``postprocessing.json``, an exported ensemble's metadata).

    Raises:
        ValueError: naming ``where``.
    """
    try:
        choice = {}
        for index, entry in classes.items():
            size = entry.get("min_size_ml")
            choice[int(index)] = ClassPostprocessing(bool(entry["largest_component"]),
                                                     None if size is None else float(size))
        return choice
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{where}: not a postprocessing record ({error})") from None


def voxel_ml(affine: np.ndarray) -> float:
    """The volume of one voxel in ml from a 4x4 voxel-to-world affine in mm (2D grids: mm^2 / 1000)."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def _components(labels: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(component ids, sizes in voxels with sizes[0] = 0) of class ``index`` (26-/8-connected); None if absent."""
    mask = labels == index
    if not mask.any():
        return None
    components, _ = ndimage.label(mask, structure=np.ones((3,) * labels.ndim, dtype=bool))
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components, sizes


def keep_largest_component(labels: np.ndarray, index: int) -> np.ndarray:
    """``labels`` with every voxel of class ``index`` outside its largest connected component (26-/8-connected)
    set to background (0)."""
    found = _components(labels, index)
    if found is None or np.count_nonzero(found[1]) <= 1:
        return labels
    components, sizes = found
    result = labels.copy()
    result[(components > 0) & (components != int(sizes.argmax()))] = 0
    return result


def remove_small_components(labels: np.ndarray, index: int, min_voxels: float) -> np.ndarray:
    """``labels`` with the connected components of class ``index`` smaller than ``min_voxels`` voxels set to
    background (0); the others stay."""
    found = _components(labels, index)
    if found is None:
        return labels
    components, sizes = found
    small = (sizes > 0) & (sizes < min_voxels)
    if not small.any():
        return labels
    result = labels.copy()
    result[small[components]] = 0
    return result


def apply_postprocessing(labels: np.ndarray, choice: dict[int, ClassPostprocessing], ml_per_voxel: float | None = None
                         ) -> np.ndarray:
    """Apply a run's postprocessing choice (:func:`read_postprocessing`) to a label map whose voxels hold
    ``ml_per_voxel`` ml each (:func:`voxel_ml`; needed by size rules).

    Raises:
        ValueError: a size rule and no voxel volume.
    """
    for index, rule in sorted(choice.items()):
        if rule.largest_component:
            labels = keep_largest_component(labels, int(index))
        elif rule.min_size_ml is not None:
            if not ml_per_voxel:
                raise ValueError(f"postprocessing of class {index}: a size rule ({rule.min_size_ml:g} ml) needs the "
                                 f"volume of a voxel")
            labels = remove_small_components(labels, int(index), rule.min_size_ml / ml_per_voxel)
    return labels
