"""Lesion-wise scores of one structure: connected components matched between a prediction and its reference.

A *lesion* is a connected component of a structure's mask (26-connected by default; 6 or 18 settable; in 2D,
6 means 4-connected and 18 or 26 mean 8-connected). Matching (:class:`LesionRules`):

* ``overlap="any"`` (default): a predicted component matches a reference lesion when they share a voxel;
* ``overlap="iou:T"``: when their intersection over union is at least ``T`` (0 < T <= 1).

Matching is many-to-many. A reference lesion with at least one match is a true positive, one without is a false
negative (missed); a predicted component matching no reference lesion is a false positive. Components smaller
than ``min_volume_ml`` (voxel count x voxel volume from the spacing) are no lesions: a small reference lesion is
neither found nor missed, a small predicted component is never a false positive, but it still counts in the
Dice of a reference lesion it matches (as BraTS 2023 leaves small reference lesions out of its scores).

Scores, after BraTS 2023 (Saluja et al., github.com/rachitsaluja/BraTS-2023-Metrics): each found reference lesion
is scored against the union of its matched predicted components (Dice in exact voxel counts; HD95 in mm by
MONAI's ``compute_hausdorff_distance``, 95th percentile, on the bounding box of the two masks, which gives the
same value as on the whole volume). Then

    lesionwise_dice = sum of found lesions' Dice / (TP + FN + FP)
    lesionwise_hd95 = (sum of found lesions' HD95 + (FN + FP) x hd95_max_mm) / (TP + FN + FP)

with ``hd95_max_mm`` 374 mm by default (BraTS's value, about the diagonal of a 240x240x155 mm volume).
``lesion_f1 = 2 TP / (2 TP + FP + FN)``. A structure with no lesion in either map: lesion F1 1, lesion-wise Dice
1, HD95 0 (BraTS's convention for 0 / 0). Unlike BraTS, reference lesions are not dilated before matching (so
two reference lesions a voxel apart stay two lesions), and HD95 uses MONAI's surface (voxel edges) rather than
DeepMind's surface-distance package: values can differ slightly from BraTS's for the same masks.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage

from medseg_attn.errors import UserError

__all__ = ["CONNECTIVITIES", "MAX_LESIONS", "LESION_COLUMNS", "PAIR_COLUMNS", "LesionResult", "LesionRules",
           "label_lesions", "lesion_scores", "parse_overlap"]

CONNECTIVITIES = {6: 1, 18: 2, 26: 3}  # 3D neighbourhood -> generate_binary_structure's rank
MAX_LESIONS = 65535  # connected components per structure and map
LESION_COLUMNS = ("reference_lesions", "predicted_lesions", "true_positives", "false_positives", "false_negatives",
                  "lesion_f1", "lesionwise_dice", "lesionwise_hd95")
PAIR_COLUMNS = ("kind", "reference_lesion", "predicted_lesions", "reference_volume_ml", "predicted_volume_ml",
                "dice", "hd95_mm")


def parse_overlap(text: str) -> float | None:
    """``any`` -> None; ``iou:T`` -> T (0 < T <= 1); anything else is a UserError."""
    spec = str(text).strip().lower()
    if spec == "any":
        return None
    kind, _, value = spec.partition(":")
    try:
        threshold = float(value) if kind == "iou" else math.nan
    except ValueError:
        threshold = math.nan
    if not (0.0 < threshold <= 1.0):
        raise UserError(f"lesion overlap {text!r}: expected 'any' or 'iou:T' with 0 < T <= 1 (e.g. iou:0.1)")
    return threshold


@dataclass(frozen=True)
class LesionRules:
    """How lesions are found and matched (see the module docstring); checked on creation."""

    connectivity: int = 26
    overlap: str = "any"
    min_volume_ml: float = 0.0
    hd95_max_mm: float = 374.0
    iou_threshold: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.connectivity not in CONNECTIVITIES:
            raise UserError(f"lesion connectivity {self.connectivity}: expected 6, 18 or 26")
        if not (math.isfinite(self.min_volume_ml) and self.min_volume_ml >= 0):
            raise UserError(f"minimum lesion volume {self.min_volume_ml} ml: expected a number >= 0")
        if not (math.isfinite(self.hd95_max_mm) and self.hd95_max_mm > 0):
            raise UserError(f"lesion HD95 maximum {self.hd95_max_mm} mm: expected a positive number")
        object.__setattr__(self, "iou_threshold", parse_overlap(self.overlap))

    def describe(self) -> dict:
        """The rules as a JSON-ready dict (summary.json)."""
        return {key: value for key, value in asdict(self).items() if key != "iou_threshold"}


@dataclass
class LesionResult:
    """One structure of one case: ``counts`` (the LESION_COLUMNS) and one ``pairs`` row per lesion."""

    counts: dict
    pairs: list[dict]


def label_lesions(mask: np.ndarray, connectivity: int = 26, *, what: str = "mask",
                  limit: int | None = MAX_LESIONS) -> tuple[np.ndarray, int]:
    """Connected components of a boolean mask (scipy.ndimage.label): int32 labels 1..n and n.

    Raises:
        UserError: more than ``limit`` components (``what`` names the mask in the message; None: no limit).
    """
    if connectivity not in CONNECTIVITIES:
        raise UserError(f"lesion connectivity {connectivity}: expected 6, 18 or 26")
    structure = ndimage.generate_binary_structure(mask.ndim, min(CONNECTIVITIES[connectivity], mask.ndim))
    labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=structure)
    if limit is not None and count > limit:
        raise UserError(f"{what}: {count} connected components; at most {limit} lesions per structure are "
                        "supported (is this a noise map or an instance map rather than a label map?)")
    return labels, int(count)


def _hd95(reference: np.ndarray, prediction: np.ndarray, spacing: list[float]) -> float:
    y, y_pred = (torch.from_numpy(np.ascontiguousarray(mask))[None, None] for mask in (reference, prediction))
    with warnings.catch_warnings():  # MONAI >= 1.5 warns about its own deprecated get_mask_edges argument
        warnings.simplefilter("ignore", FutureWarning)
        return float(compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing))


def _box(boxes: Sequence[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(slice(min(b.start for b in axis), max(b.stop for b in axis)) for axis in zip(*boxes, strict=True))


def _overlaps(ref_labels: np.ndarray, pred_labels: np.ndarray, n_pred: int) -> dict[tuple[int, int], int]:
    """(reference lesion, predicted component) -> shared voxels, for every pair sharing one."""
    both = (ref_labels > 0) & (pred_labels > 0)
    keys, counts = np.unique(ref_labels[both].astype(np.int64) * (n_pred + 1) + pred_labels[both], return_counts=True)
    return {(int(k) // (n_pred + 1), int(k) % (n_pred + 1)): int(c) for k, c in zip(keys, counts, strict=True)}


def _ratio(numerator: float, denominator: int, empty: float) -> float:
    return float(numerator / denominator) if denominator else empty


def lesion_scores(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
                  rules: LesionRules | None = None, *, case: str = "case") -> LesionResult:
    """Lesion counts, lesion F1, BraTS-2023 lesion-wise Dice and HD95, and one row per lesion, of one structure.

    Args:
        prediction, reference: boolean masks of one structure, same 2D or 3D shape.
        spacing: voxel size in mm per axis (volumes in ml are voxel counts x the product / 1000).
        rules: connectivity, matching rule, minimum volume, HD95 maximum (default :class:`LesionRules`()).
        case: names the case in messages.

    Returns:
        ``counts``: reference_lesions, predicted_lesions (components of at least the minimum volume),
        true_positives (found reference lesions), false_positives, false_negatives, lesion_f1, lesionwise_dice,
        lesionwise_hd95; ``pairs``: per found lesion (``matched``: its predicted components' ids joined by ``;``),
        missed lesion (``missed``) and false component (``false_positive``): ids (scipy.ndimage.label's numbers,
        in raster order), volumes in ml, Dice and HD95 in mm.
    """
    rules = rules or LesionRules()
    prediction, reference = np.asarray(prediction, dtype=bool), np.asarray(reference, dtype=bool)
    if prediction.shape != reference.shape or prediction.ndim not in (2, 3) or len(spacing) != prediction.ndim:
        raise UserError(f"{case}: prediction {prediction.shape}, reference {reference.shape}, spacing "
                        f"{tuple(spacing)}; expected one 2D or 3D shape and one spacing per axis")
    spacing = [float(s) for s in spacing]
    ml = float(np.prod(spacing)) / 1000.0
    ref_labels, n_ref = label_lesions(reference, rules.connectivity, what=f"{case}: reference")
    pred_labels, n_pred = label_lesions(prediction, rules.connectivity, what=f"{case}: prediction")
    ref_voxels = np.bincount(ref_labels.ravel(), minlength=n_ref + 1)
    pred_voxels = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    ref_kept = [r for r in range(1, n_ref + 1) if ref_voxels[r] * ml >= rules.min_volume_ml]
    pred_kept = {p for p in range(1, n_pred + 1) if pred_voxels[p] * ml >= rules.min_volume_ml}
    matches: dict[int, list[int]] = {}
    shared_of = _overlaps(ref_labels, pred_labels, n_pred)
    for (r, p), shared in shared_of.items():
        iou = shared / (ref_voxels[r] + pred_voxels[p] - shared)
        if rules.iou_threshold is None or iou >= rules.iou_threshold:
            matches.setdefault(r, []).append(p)
    ref_boxes = ndimage.find_objects(ref_labels, max_label=n_ref) if n_ref else []
    pred_boxes = ndimage.find_objects(pred_labels, max_label=n_pred) if n_pred else []
    pairs, dice_sum, hd_sum, tp, fn = [], 0.0, 0.0, 0, 0
    for r in ref_kept:
        volume = float(ref_voxels[r] * ml)
        matched = sorted(matches.get(r, []))
        if not matched:
            fn += 1
            pairs.append({"kind": "missed", "reference_lesion": r, "predicted_lesions": "",
                          "reference_volume_ml": volume, "predicted_volume_ml": 0.0, "dice": 0.0,
                          "hd95_mm": rules.hd95_max_mm})
            continue
        tp += 1
        predicted = int(sum(pred_voxels[p] for p in matched))
        shared = sum(shared_of.get((r, p), 0) for p in matched)
        dice = float(2.0 * shared / (ref_voxels[r] + predicted))
        region = _box([ref_boxes[r - 1], *(pred_boxes[p - 1] for p in matched)])
        hd95 = _hd95(ref_labels[region] == r, np.isin(pred_labels[region], matched), spacing)
        dice_sum, hd_sum = dice_sum + dice, hd_sum + hd95
        pairs.append({"kind": "matched", "reference_lesion": r, "predicted_lesions": ";".join(map(str, matched)),
                      "reference_volume_ml": volume, "predicted_volume_ml": float(predicted * ml), "dice": dice,
                      "hd95_mm": hd95})
    matched_any = {p for found in matches.values() for p in found}
    false = sorted(pred_kept - matched_any)
    pairs += [{"kind": "false_positive", "reference_lesion": "", "predicted_lesions": str(p),
               "reference_volume_ml": 0.0, "predicted_volume_ml": float(pred_voxels[p] * ml), "dice": 0.0,
               "hd95_mm": rules.hd95_max_mm} for p in false]
    fp, total = len(false), tp + fn + len(false)
    counts = {"reference_lesions": len(ref_kept), "predicted_lesions": len(pred_kept), "true_positives": tp,
              "false_positives": fp, "false_negatives": fn,
              "lesion_f1": _ratio(2 * tp, 2 * tp + fp + fn, 1.0),
              "lesionwise_dice": _ratio(dice_sum, total, 1.0),
              "lesionwise_hd95": _ratio(hd_sum + (fn + fp) * rules.hd95_max_mm, total, 0.0)}
    return LesionResult(counts, pairs)
