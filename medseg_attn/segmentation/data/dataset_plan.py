"""THE planning sequence that ``plan``, ``preprocess`` (:func:`prepare_dataset`) and ``train`` share: load the
dataset, check every training case, fingerprint the dataset, plan, and apply the plan to the configuration. Written
once, so the three commands can never plan differently for the same dataset, config and device."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg_attn.config import Config
from medseg_attn.errors import UserError
from medseg_attn.segmentation.data.cache import cache_root
from medseg_attn.segmentation.data.datasets import (
    SegmentationDataset,
    check_training_data,
    declared_channels,
    load_dataset,
)
from medseg_attn.segmentation.data.planning import Plan, make_plan
from medseg_attn.segmentation.data.preprocess import (
    cached_case_features,
    checked_cases,
    fingerprint_cases,
    preprocess_cases,
)
from medseg_attn.segmentation.data.sparse import ignore_index, without_ignore
from medseg_attn.segmentation.data.transforms import Preprocessing

__all__ = ["DatasetPlan", "plan_dataset", "prepare_dataset"]


@dataclass(frozen=True)
class DatasetPlan:
    """A checked dataset and its plan.

    Attributes:
        dataset: the dataset (its training cases checked).
        labels: its classes, the sparse labels' ``ignore`` value included.
        config: the configuration with the dataset's path made absolute, ``data.labels`` and ``data.modality``
            resolved, and the plan applied (spacing, patch size, intensity, normalisation mask, batch size).
        plan: the plan (with the fingerprint it was made from).
    """

    dataset: SegmentationDataset
    labels: dict[int, str]
    config: Config
    plan: Plan


def plan_dataset(config: Config, device: str, progress: bool = False, dist: Any = None,
                 dataset: SegmentationDataset | None = None, plan: Plan | None = None) -> DatasetPlan:
    """Check, fingerprint and plan ``config.data.dataset`` for ``device`` ('cpu', 'cuda').

    Args:
        progress: show progress bars (the case checks and the fingerprint run in worker processes, cached per case).
        dist: under DDP, the ranks share the checks and the fingerprint.
        dataset: the dataset when the caller has loaded it already.
        plan: a plan to keep instead of planning (a resumed run's, or a cross-validation run's for its folds).

    Raises:
        UserError: no dataset, or cases that fail the check (all of them listed).
    """
    if not config.data.dataset:
        raise UserError("no dataset given: pass --data or set data.dataset")
    dataset = dataset or load_dataset(config.data.dataset, config.data.cache_dir)
    data = config.data
    labels = data.labels or dataset.labels
    problems = checked_cases(dataset.training, len(labels), data.cache_dir, data.preprocess_workers, progress, dist,
                             channels=declared_channels(dataset), ignore=ignore_index(labels))
    check_training_data(dataset, labels, problems=problems)  # every problem listed, before any fingerprint
    modality = data.modality if data.modality != "auto" else dataset.modality
    config = config.replace(data={"labels": labels, "modality": modality or "auto",
                                  "dataset": str(Path(data.dataset).expanduser().resolve())})
    if plan is None:
        fingerprint = fingerprint_cases(dataset.training, modality, data.cache_dir, data.preprocess_workers, progress,
                                        dist)  # cached per case: a second run reads it
        plan = make_plan(fingerprint, config, device)
    resolved = plan.resolved
    config = config.replace(data={"spacing": resolved.spacing, "patch_size": resolved.patch_size,
                                  "intensity": resolved.intensity, "normalisation_mask": resolved.normalisation_mask},
                            train={"batch_size": resolved.batch_size})
    return DatasetPlan(dataset, labels, config, plan)


def prepare_dataset(config: Any, device: str = "cpu", progress: bool = False) -> dict[str, Any]:
    """What ``medseg-attn preprocess`` does: check, fingerprint, plan and preprocess every training case of
    ``config.data.dataset`` into the cache, as ``train`` would with the same config and device.

    Returns:
        ``{"cases", "built", "cache", "plan", "seconds"}``: cases in the dataset, entries this call built (the
        others were reused), the cache folder, the :class:`~medseg_attn.segmentation.data.planning.Plan`.
    """
    start = time.perf_counter()
    planned = plan_dataset(config, device, progress)  # the same sequence as `plan` and `train`
    data, labels, cases = planned.config.data, planned.labels, planned.dataset.training
    prep = Preprocessing.from_plan(data, planned.plan)
    counts: dict[str, int] = {}
    classes = len(without_ignore(labels))  # the network's classes (sparse labels' ignore value left out)
    entries = preprocess_cases(cases, prep, data, classes, progress=progress, counts=counts, label_values=len(labels))
    cached_case_features(cases, without_ignore(labels), prep.intensity == "ct", data.cache_dir,
                         data.preprocess_workers, progress)  # the QC fingerprint train stores in the checkpoint
    return {"cases": len(entries), "built": counts["built"], "cache": cache_root(data.cache_dir),
            "plan": planned.plan, "seconds": time.perf_counter() - start}
