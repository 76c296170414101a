"""k-fold assignment of cases, grouped by patient: the cases of one patient always share a fold.

A dataset.json may name the patient of each case (``"patient": "P017"`` in a ``training`` entry, or a top-level
``"patients": {case: patient}`` mapping for nnU-Net v2 folders without file lists); a case without one is its own
patient. Patients are shuffled by the seed and each goes to the fold holding the fewest cases so far (ties: the
lowest fold), so folds stay balanced in cases; with one case per patient this is plain round robin over the
shuffled cases.
"""

from __future__ import annotations

import random
from typing import Any

from medseg_attn.errors import UserError

__all__ = ["assign_folds", "patient_of"]


def patient_of(case: dict[str, Any]) -> str:
    """The patient a case belongs to (its own name when the dataset names none)."""
    return str(case.get("patient") or case["case"])


def assign_folds(cases: list[dict[str, Any]], folds: int, seed: int) -> list[list[dict[str, Any]]]:
    """The validation cases of each of ``folds`` folds; every case in exactly one, a patient's cases together.

    Raises:
        ValueError: fewer patients than folds.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for case in sorted(cases, key=lambda c: c["case"]):
        groups.setdefault(patient_of(case), []).append(case)
    if len(groups) < folds:
        if len(groups) == len(cases):  # one case per patient: cases are what is counted
            raise UserError(f"{folds}-fold cross-validation needs at least {folds} cases, got {len(cases)}")
        raise UserError(f"{folds}-fold cross-validation needs at least {folds} patients (a patient's cases share a "
                        f"fold), got {len(groups)} patient{'s' if len(groups) != 1 else ''} ({len(cases)} cases)")
    if len(groups) == len(cases):  # one case per patient: the historical order (shuffled cases, round robin)
        order = [group[0] for group in groups.values()]
        random.Random(seed).shuffle(order)
        return [order[fold::folds] for fold in range(folds)]
    patients = sorted(groups)
    random.Random(seed).shuffle(patients)
    result: list[list[dict[str, Any]]] = [[] for _ in range(folds)]
    for patient in patients:
        smallest = min(range(folds), key=lambda fold: (len(result[fold]), fold))
        result[smallest].extend(groups[patient])
    return result
