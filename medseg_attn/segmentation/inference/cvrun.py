"""A cross-validation run folder as one model: its folds, and the postprocessing its CV chose.

Layout (written by :mod:`medseg_attn.segmentation.crossval`)::

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["ClassPostprocessing", "apply_postprocessing", "components", "cv_members", "fold_dir", "fold_states",
           "is_cv_run", "keep_largest_component", "parse_postprocessing", "read_postprocessing", "voxel_ml"]


@dataclass(frozen=True)
class ClassPostprocessing:
    """What predict does to one class's voxels after the argmax (a CV run's choice, ``postprocessing.json``).

    ``largest_component``: keep only its largest connected component; ``min_size_ml``: remove its connected
    components smaller than this many ml (mm^2 / 1000 for 2D). Both off: nothing.
    """

    largest_component: bool = False
    min_size_ml: float | None = None

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> ClassPostprocessing:
        """One class's entry of ``postprocessing.json`` (``min_size_ml`` absent in records written before it)."""
        size = entry.get("min_size_ml")
        return cls(bool(entry["largest_component"]), None if size is None else float(size))

    def to_entry(self) -> dict[str, Any]:
        return {"largest_component": self.largest_component, "min_size_ml": self.min_size_ml}

    def describe(self) -> str:
        if self.largest_component:
            return "largest component kept"
        return f"components below {self.min_size_ml:g} ml removed" if self.min_size_ml is not None else "not applied"

    def removed(self, sizes: np.ndarray, ml_per_voxel: float | None) -> np.ndarray | None:
        """Which components go, from their sizes in voxels (``sizes[0]``: background, 0): a boolean per component
        id, or None when none does.

        Raises:
            ValueError: a size rule and no voxel volume.
        """
        if self.largest_component:
            gone = sizes > 0
            gone[int(sizes.argmax())] = False
        elif self.min_size_ml is not None:
            if not ml_per_voxel:
                raise ValueError(f"a size rule ({self.min_size_ml:g} ml) needs the volume of a voxel")
            gone = (sizes > 0) & (sizes < self.min_size_ml / ml_per_voxel)
        else:
            return None
        return gone if gone.any() else None


def is_cv_run(path: str | Path) -> bool:
    """Whether ``path`` is a cross-validation run folder (it holds ``cv.json``)."""
    return (Path(path) / "cv.json").is_file()


def fold_dir(run: str | Path, fold: int) -> Path:
    return Path(run) / f"fold_{fold}"


def fold_states(run: str | Path) -> dict[int, str]:
    """Per fold of the CV run: 'finished' (``finished.json``), 'started' (a checkpoint, not finished: training or
    interrupted) or 'missing' (no checkpoint yet)."""
    run = Path(run)
    states = {}
    for fold in range(int(json.loads((run / "cv.json").read_text())["folds"])):
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
        return {int(index): ClassPostprocessing.from_entry(entry) for index, entry in classes.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{where}: not a postprocessing record ({error})") from None


def voxel_ml(affine: np.ndarray) -> float:
    """The volume of one voxel in ml from a 4x4 voxel-to-world affine in mm (2D grids: mm^2 / 1000)."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def components(labels: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(component ids, sizes in voxels with sizes[0] = 0) of class ``index`` (26-/8-connected); None if absent."""
    mask = labels == index
    if not mask.any():
        return None
    ids, _ = ndimage.label(mask, structure=np.ones((3,) * labels.ndim, dtype=bool))
    sizes = np.bincount(ids.ravel())
    sizes[0] = 0
    return ids, sizes


def _apply_rule(labels: np.ndarray, index: int, rule: ClassPostprocessing, ml_per_voxel: float | None,
                found: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """``labels`` with the components of class ``index`` that ``rule`` removes (``found``: :func:`components`)
    set to background (0); ``labels`` itself when none goes."""
    if found is None:
        return labels
    ids, sizes = found
    gone = rule.removed(sizes, ml_per_voxel)
    if gone is None:
        return labels
    result = labels.copy()
    result[gone[ids]] = 0
    return result


def keep_largest_component(labels: np.ndarray, index: int) -> np.ndarray:
    """``labels`` with every voxel of class ``index`` outside its largest connected component (26-/8-connected)
    set to background (0)."""
    return _apply_rule(labels, index, ClassPostprocessing(largest_component=True), None, components(labels, index))


def apply_postprocessing(labels: np.ndarray, choice: dict[int, ClassPostprocessing], ml_per_voxel: float | None = None,
                         found: dict[int, tuple[np.ndarray, np.ndarray] | None] | None = None) -> np.ndarray:
    """Apply a run's postprocessing choice (:func:`read_postprocessing`) to a label map whose voxels hold
    ``ml_per_voxel`` ml each (:func:`voxel_ml`; needed by size rules). ``found``: the classes' components
    (:func:`components`) when the caller has them already (labelled otherwise).

    Raises:
        ValueError: a size rule and no voxel volume.
    """
    for index, rule in sorted(choice.items()):
        if rule.largest_component or rule.min_size_ml is not None:
            try:
                labels = _apply_rule(labels, int(index), rule, ml_per_voxel,
                                     found[index] if found and index in found else components(labels, int(index)))
            except ValueError as error:
                raise ValueError(f"postprocessing of class {index}: {error}") from None
    return labels
