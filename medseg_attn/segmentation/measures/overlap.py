"""Overlap of masks in exact integer counts (the primitive under member agreement, the CV's postprocessing choice
and the stress test's Dice)."""

from __future__ import annotations

import numpy as np

__all__ = ["mask_dice"]


def mask_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks in exact integer counts, with the convention of
    :func:`medseg_attn.segmentation.evaluation.evaluate.evaluate_case`: both empty -> 1,
    exactly one empty -> 0. (The case metrics themselves come from MONAI, the independent reference.)"""
    total = int(pred.sum()) + int(ref.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & ref).sum()) / total
