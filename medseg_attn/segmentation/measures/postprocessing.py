"""Postprocessing rules of a label map: per class, keep the largest connected component or remove the components
below a size (what a cross-validation run chose, ``postprocessing.json``; read by :func:`read_postprocessing`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medseg_attn.errors import UserError

__all__ = ["ClassPostprocessing", "apply_postprocessing", "components", "parse_postprocessing",
           "read_postprocessing", "voxel_ml"]


_MISSING = object()


@dataclass(frozen=True)
class ClassPostprocessing:
    """What predict does to one class's voxels after the argmax (a CV run's choice, ``postprocessing.json``).

    ``largest_component``: keep only its largest connected component; ``min_size_ml``: remove its connected
    components smaller than this many ml (mm^2 / 1000 for 2D). Both off: nothing.
    """

    largest_component: bool = False
    min_size_ml: float | None = None

    @classmethod
    def from_entry(cls, entry: dict[str, Any], where: str = "postprocessing.json", index: Any = "?"
                   ) -> ClassPostprocessing:
        """One class's entry of ``postprocessing.json`` (``min_size_ml`` absent in records written before it),
        checked as the config loader checks its values: ``largest_component`` true or false (not the string
        'false'), ``min_size_ml`` null or a finite number > 0 (ml).

        Raises:
            UserError: one line naming ``where``, the class ``index``, the key and the bad value.
        """
        if not isinstance(entry, dict):
            raise UserError(f"{where}: class {index}: expected a mapping with largest_component, got {entry!r:.80}")
        largest, size = entry.get("largest_component", _MISSING), entry.get("min_size_ml")
        if not isinstance(largest, bool):
            shown = "nothing" if largest is _MISSING else f"{largest!r:.80}"
            raise UserError(f"{where}: class {index}: largest_component must be true or false, got {shown}")
        if size is not None and (isinstance(size, bool) or not isinstance(size, (int, float))
                                 or not math.isfinite(size) or size <= 0):
            raise UserError(f"{where}: class {index}: min_size_ml must be null or a number of ml > 0, "
                            f"got {size!r:.80}")
        return cls(largest, None if size is None else float(size))

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
                raise UserError(f"a size rule ({self.min_size_ml:g} ml) needs the volume of a voxel")
            gone = (sizes > 0) & (sizes < self.min_size_ml / ml_per_voxel)
        else:
            return None
        return gone if gone.any() else None


def parse_postprocessing(classes: dict[str, Any], where: str, labels: dict[int, str] | None = None
                         ) -> dict[int, ClassPostprocessing]:
    """The ``classes`` of a postprocessing record (``postprocessing.json``, an exported ensemble's metadata), each
    entry checked (:meth:`ClassPostprocessing.from_entry`); with ``labels`` (the model's classes) every class must
    be one of its foreground classes.

    Raises:
        UserError: one line naming ``where``, the class, the key and the bad value.
    """
    if not isinstance(classes, dict):
        raise UserError(f"{where}: not a postprocessing record (classes: expected a mapping, got {classes!r:.80})")
    choice = {}
    for key, entry in classes.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise UserError(f"{where}: class {key!r:.80}: expected a class index (an integer)") from None
        if labels is not None and (index not in labels or index == 0):
            known = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k)
            raise UserError(f"{where}: class {index}: not a foreground class of the model (its classes: {known})")
        choice[index] = ClassPostprocessing.from_entry(entry, where, index)
    return choice


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
                raise UserError(f"postprocessing of class {index}: {error}") from None
    return labels


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
