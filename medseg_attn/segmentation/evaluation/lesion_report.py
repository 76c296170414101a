"""Lesion-wise evaluation of a prediction folder (``medseg-attn evaluate --lesions``): ``lesions.csv``,
``lesion_pairs.csv`` and the ``lesions`` entry of ``summary.json``.

Per case and structure the scores of :func:`medseg_attn.segmentation.measures.lesions.lesion_scores` (lesions are
connected components; matching, minimum volume and the BraTS-2023 aggregation are described there and in
docs/lesions.md). A case where a structure has no lesion in either map is a valid row: zero counts, lesion F1 1,
lesion-wise Dice 1, HD95 0. A structure named in ``LesionOptions.structures`` without a lesion in any case is an
error (nothing is written), as is every structure being empty when none is named.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg_attn.errors import UserError
from medseg_attn.io.tables import write_csv
from medseg_attn.segmentation.measures.lesions import LESION_COLUMNS, PAIR_COLUMNS, LesionRules, lesion_scores

logger = logging.getLogger(__name__)

__all__ = ["LESIONS_CSV", "LESION_PAIRS_CSV", "LesionOptions", "case_lesions", "check_lesions_found",
           "lesion_structures", "summarize_lesions", "write_lesion_tables"]

LESIONS_CSV, LESION_PAIRS_CSV = "lesions.csv", "lesion_pairs.csv"
COUNTS = ("reference_lesions", "predicted_lesions", "true_positives", "false_positives", "false_negatives")


@dataclass(frozen=True)
class LesionOptions:
    """What ``--lesions`` asks: the structures (names or class indices as text; empty: every evaluated foreground
    class) and the :class:`LesionRules`."""

    structures: tuple[str, ...] = ()
    rules: LesionRules = field(default_factory=LesionRules)


def lesion_structures(options: LesionOptions, names: dict[int, str]) -> dict[int, str]:
    """Class index -> name of the structures to score, from the evaluated classes ``names``."""
    foreground = {index: name for index, name in names.items() if index != 0}
    if not options.structures:
        return foreground
    by_name = {name: index for index, name in foreground.items()} | {str(i): i for i in foreground}
    unknown = [item for item in options.structures if item not in by_name]
    if unknown:
        raise UserError(f"--lesions {' '.join(unknown)}: not an evaluated structure; expected names or indices "
                        f"of {', '.join(f'{i}={n}' for i, n in foreground.items())}")
    chosen = sorted({by_name[item] for item in options.structures})
    return {index: foreground[index] for index in chosen}


def case_lesions(case: str, pred: np.ndarray, label: np.ndarray, spacing: Sequence[float],
                 structures: dict[int, str], rules: LesionRules, ignore: int | None = None,
                 ) -> tuple[list[dict], list[dict]]:
    """lesions.csv rows and lesion_pairs.csv rows of one case (``ignore`` voxels of the label count nowhere)."""
    if ignore is not None and (label == ignore).any():
        annotated = label != ignore
        pred, label = np.where(annotated, pred, 0), np.where(annotated, label, 0)
    rows, pairs = [], []
    for index, name in structures.items():
        result = lesion_scores(pred == index, label == index, spacing, rules, case=f"{case} ({name})")
        rows.append({"case": case, "structure": name, **result.counts})
        pairs += [{"case": case, "structure": name, **pair} for pair in result.pairs]
    return rows, pairs


def check_lesions_found(rows: list[dict], structures: dict[int, str], named: bool) -> None:
    """A named structure with no lesion in any map, or (none named) every structure so, is a UserError."""
    empty = [name for name in structures.values()
             if not any(r["reference_lesions"] or r["predicted_lesions"] for r in rows if r["structure"] == name)]
    cases = len({row["case"] for row in rows})
    if (named and empty) or (empty and len(empty) == len(structures)):
        raise UserError(f"--lesions: {', '.join(empty)} has no lesion in any reference or prediction of the "
                        f"{cases} case(s); name structures that occur (nothing written)")
    if empty:
        logger.warning("lesions: %s has no lesion in any reference or prediction; its rows are zero counts",
                       ", ".join(empty))


def _statistics(values: list[float]) -> dict[str, float | None]:
    array = np.asarray(values, dtype=np.float64)
    reducers = {"mean": np.mean, "std": np.std, "median": np.median, "min": np.min, "max": np.max}
    return {key: float(reduce(array)) if array.size else None for key, reduce in reducers.items()}


def summarize_lesions(rows: list[dict], pairs: list[dict], structures: dict[int, str], rules: LesionRules) -> dict:
    """summary.json's ``lesions``: per structure pooled counts and scores, statistics over cases, per-case values.

    Pooled: counts summed over cases, ``lesion_f1`` from them; ``pooled_lesionwise_dice`` / ``_hd95`` the BraTS
    ratio over every lesion of every case (the mean of lesion_pairs.csv's values; 1 / 0 with no lesion at all).
    ``lesionwise_dice`` / ``_hd95``: mean, std, median, min, max of the per-case values (BraTS ranks by the mean).
    """
    result = {}
    for name in structures.values():
        mine = [row for row in rows if row["structure"] == name]
        scored = [pair for pair in pairs if pair["structure"] == name]
        counts = {key: int(sum(row[key] for row in mine)) for key in COUNTS}
        tp, fp, fn = counts["true_positives"], counts["false_positives"], counts["false_negatives"]
        result[name] = {
            **counts,
            "lesion_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
            "pooled_lesionwise_dice": float(np.mean([p["dice"] for p in scored])) if scored else 1.0,
            "pooled_lesionwise_hd95": float(np.mean([p["hd95_mm"] for p in scored])) if scored else 0.0,
            "lesionwise_dice": _statistics([row["lesionwise_dice"] for row in mine]),
            "lesionwise_hd95": _statistics([row["lesionwise_hd95"] for row in mine]),
            "per_case": {row["case"]: {key: row[key] for key in LESION_COLUMNS} for row in mine},
        }
    return {"structures": result, "rules": rules.describe(), "files": [LESIONS_CSV, LESION_PAIRS_CSV]}


def write_lesion_tables(rows: list[dict], pairs: list[dict], output_dir: Path) -> None:
    """``lesions.csv`` (one row per case and structure) and ``lesion_pairs.csv`` (one row per lesion)."""
    write_csv(output_dir / LESIONS_CSV, rows, ("case", "structure", *LESION_COLUMNS), float_format=".6f")
    write_csv(output_dir / LESION_PAIRS_CSV, pairs, ("case", "structure", *PAIR_COLUMNS), float_format=".6f")
