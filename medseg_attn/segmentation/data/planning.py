"""Dataset fingerprint -> plan (nnU-Net's lesson: the pipeline adapts to the dataset).

The fingerprint reads every training case once (reoriented to RAS): shape, spacing, the body mask of
:mod:`medseg_attn.segmentation.data.foreground` (how much of the volume it covers, how much the crop removes),
intensity statistics inside the body and inside the labelled voxels. The plan derived from it:

- target spacing: the median spacing; when the coarsest axis is more than 3 times the finest (anisotropic
  data), that axis takes the 10th percentile of its spacings instead (nnU-Net's rule), so thin-slice cases are
  not thrown away to the median; then, when the patch the budget allows would cover less than 25 % of the median
  cropped case, the spacing is coarsened (up to 2x, only along axes the patch does not span, never the coarse
  axis of anisotropic data) until it covers 25 % (nnU-Net's low-resolution rule: context over detail);
- patch size: the median cropped shape at the run's spacing, a multiple of the network's divisor, shrunk
  (largest patch/shape ratio first) until ``batch x patch`` voxels fit the voxel budget (CPU 2 x 64^3, CUDA
  2 x 128^3, or ``data.voxel_budget``); batch size: what the budget leaves, at least 2, at most 5 % of the
  dataset's voxels per batch;
- normalisation: CT -> clip to the dataset's labelled-voxel percentiles 0.5-99.5 and z-score with their mean and
  standard deviation (nnU-Net's CT scheme); otherwise a per-case z-score inside the body mask;
- mask use: the z-score uses the body mask and sets the background to one value when the mask covers less
  than 80 % of the median case (there is background to disagree about); CT masks the air outside the body.

Every planned value yields to a value set in the config (``data.spacing``, ``data.patch_size``,
``train.batch_size``, ``data.intensity``, ``data.normalisation_mask``); the plan records which came from
where. The resolved plan is written as ``plan.json`` in the run and stored in the checkpoint; prediction uses
the checkpoint's preprocessing unchanged.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg_attn.config import Config
from medseg_attn.io.files import atomic_write_text
from medseg_attn.io.readers import LoadVolumed
from medseg_attn.segmentation.data.foreground import body_mask

logger = logging.getLogger(__name__)

__all__ = ["ANISOTROPY", "COVERAGE", "MASK_FRACTION", "MAX_COARSENING", "VOXEL_BUDGET", "case_rng", "dataset_fingerprint", "describe_plan", "make_plan",
           "pooled_fingerprint", "save_plan"]

ANISOTROPY = 3.0  # coarsest / finest spacing above which the coarse axis is planned finer than its median
MASK_FRACTION = 0.8  # the z-score is masked when the body covers less than this share of the median case
VOXEL_BUDGET = {"cpu": 2 * 64**3, "cuda": 2 * 128**3}  # batch x patch voxels per optimizer step
COVERAGE = 0.25  # the planned spacing is coarsened until the patch covers this share of the median case ...
MAX_COARSENING = 2.0  # ... but at most this factor per axis
SAMPLES_PER_CASE = 10_000  # labelled voxels sampled per case for the CT statistics


def _case_fingerprint(case: dict[str, Any], ct: bool, rng: np.random.Generator) -> tuple[dict[str, Any], np.ndarray]:
    from monai import transforms as mt

    data = LoadVolumed(["image", "label"])({"image": case["image"], "label": case["label"]})
    dims = data["image"].ndim - 1
    data = mt.Orientationd(["image", "label"], axcodes="RAS"[:dims],
                           labels=(("L", "R"), ("P", "A"), ("I", "S"))[:dims])(data)
    image = np.asarray(torch.as_tensor(data["image"]), dtype=np.float32)  # (C, *S)
    label = np.asarray(torch.as_tensor(data["label"]))[0]  # (*S)
    spacing = [float(v) for v in np.asarray(data["image"].pixdim)[: image.ndim - 1]]
    mask = body_mask(image, ct=ct)
    box = [np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis))) for axis in range(mask.ndim)]
    cropped = [int(b[-1] - b[0] + 1) if b.size else int(n) for b, n in zip(box, mask.shape)]
    inside = image[0][mask]
    labelled = image[0][label > 0]
    sample = rng.choice(labelled, size=min(SAMPLES_PER_CASE, labelled.size), replace=False) if labelled.size else labelled
    record = {
        "case": case["case"], "shape": list(mask.shape), "spacing": [round(v, 4) for v in spacing],
        "body_fraction": round(float(mask.mean()), 4),
        "crop_fraction": round(1.0 - float(np.prod(cropped)) / float(mask.size), 4),
        "cropped_shape": cropped,
        "body_intensity": _stats(inside), "label_intensity": _stats(labelled),
        "label_fraction": round(float((label > 0).mean()), 6),
    }
    return record, sample


def _stats(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    low, high = np.percentile(values, (0.5, 99.5))
    return {"mean": round(float(values.mean()), 4), "std": round(float(values.std()), 4),
            "p0.5": round(float(low), 4), "p99.5": round(float(high), 4)}


def dataset_fingerprint(cases: list[dict[str, Any]], modality: str | None, progress: bool = False) -> dict[str, Any]:
    """Read every case once and describe it (see the module docstring).

    Args:
        cases: ``{"image", "label", "case"}`` dicts (a dataset's training cases).
        modality: 'ct' uses the HU body threshold; anything else the relative (MR) one.
        progress: show a progress bar.
    """
    from tqdm.auto import tqdm

    if not cases:
        raise ValueError("no cases to fingerprint")
    records, samples = [], []
    for case in tqdm(cases, desc="fingerprint", unit="case", disable=not progress):
        record, sample = _case_fingerprint(case, modality == "ct", case_rng(case))
        records.append(record)
        samples.append(sample)
    return pooled_fingerprint(records, samples, modality)


def case_rng(case: dict[str, Any]) -> np.random.Generator:
    """A case's own sampling stream: the same whichever process fingerprints it, in whatever order."""
    return np.random.default_rng(zlib.crc32(str(case["case"]).encode()))


def pooled_fingerprint(records: list[dict[str, Any]], samples: list[np.ndarray], modality: str | None
                       ) -> dict[str, Any]:
    """The dataset fingerprint from each case's record and labelled-intensity sample."""
    pooled = np.concatenate(samples) if samples else np.zeros(0)
    return {"modality": modality or "unknown", "cases": records, "label_intensity": _stats(pooled)}


def _target_spacing(spacings: np.ndarray) -> tuple[list[float], str]:
    target = np.median(spacings, axis=0)
    worst = int(np.argmax(target))
    others = np.delete(target, worst)
    if others.size and target[worst] > ANISOTROPY * others.min():
        finer = float(np.percentile(spacings[:, worst], 10))
        target[worst] = max(finer, float(others.max()))
        return [round(float(v), 4) for v in target], (f"median, axis {worst} from the 10th percentile of its spacings "
                                                      f"(anisotropy above {ANISOTROPY:g})")
    return [round(float(v), 4) for v in target], "median of the training cases"


def _patch_and_batch(shape: np.ndarray, divisor: int, budget: int, dataset_voxels: float
                     ) -> tuple[list[int], int]:
    """Patch (multiple of ``divisor``, at most the rounded-up median shape) and batch within ``budget`` voxels."""
    patch = np.array([max(divisor, int(math.ceil(s / divisor)) * divisor) for s in shape])
    while 2 * int(np.prod(patch)) > budget:
        bottleneck = np.ceil(patch / divisor)
        # a side may shrink while it stays above the divisor and the bottleneck keeps 2 or more voxels
        shrinkable = (patch > divisor) & (np.prod(bottleneck) / bottleneck * np.ceil((patch - divisor) / divisor) >= 2)
        if not shrinkable.any():
            break
        ratio = np.where(shrinkable, patch / np.maximum(shape, 1), -np.inf)
        patch[int(np.argmax(ratio))] -= divisor
    voxels = int(np.prod(patch))
    cap = max(2, int(0.05 * dataset_voxels / voxels))
    batch = int(max(2, min(budget // voxels, cap, 32)))
    return [int(v) for v in patch], batch


def _cropped_shapes(cases: list[dict[str, Any]], spacing: list[float] | None) -> np.ndarray:
    """Each case's body-cropped shape on the grid of ``spacing`` (None: the case's own grid)."""
    return np.array([np.array(c["cropped_shape"]) * (np.array(c["spacing"]) / np.array(spacing) if spacing else 1.0)
                     for c in cases])


def _coarsen_for_coverage(cases: list[dict[str, Any]], target: list[float], divisor: int, budget: int
                          ) -> tuple[list[float], str]:
    """Coarsen ``target`` until the planned patch covers ``COVERAGE`` of the median cropped case (nnU-Net's
    low-resolution rule; at most ``MAX_COARSENING`` x finer than planned).

    A patch that sees a small part of a large case cannot tell apart organs that differ by where they are (spleen
    from liver): on a CPU budget, context is worth more than the finest voxels. Only axes the patch does not span
    yet grow, 3 % per step; of an anisotropic spacing, like nnU-Net, only the finer axes (those more than 2x finer
    than the coarsest).
    """
    spacing = np.array(target, dtype=float)
    for _ in range(200):
        shape = np.median(_cropped_shapes(cases, list(spacing)), axis=0)
        patch, _ = _patch_and_batch(shape, divisor, budget, float(np.prod(shape)))
        coverage = float(np.prod(np.minimum(patch, shape)) / max(np.prod(shape), 1.0))
        if coverage >= COVERAGE:
            break
        # axes the patch does not span yet and that may still grow; of an anisotropic spacing only the finer ones
        open_axes = (np.array(patch) < shape) & (spacing < MAX_COARSENING * np.array(target) - 1e-9)
        finer = spacing.max() / spacing > 2  # anisotropic: the coarse axis does not grow at all
        grow = open_axes & finer if finer.any() else open_axes
        if not grow.any():
            break
        spacing = np.minimum(spacing * np.where(grow, 1.03, 1.0), MAX_COARSENING * np.array(target))
    if np.allclose(spacing, target):
        return target, ""
    return ([round(float(v), 4) for v in spacing],
            f"; coarsened from {target} so that the patch covers {coverage:.0%} of the median case "
            f"(target {COVERAGE:.0%}, at most {MAX_COARSENING:g}x)")


def make_plan(fingerprint: dict[str, Any], config: Config, device: str = "cpu") -> dict[str, Any]:
    """The plan for ``fingerprint``: every value planned, then replaced by the config's where it sets one.

    Returns:
        A JSON-ready dict: the planned values, the resolved values (what the run uses) and where each came from.
    """
    data, train = config.data, config.train
    cases = fingerprint["cases"]
    spacings = np.array([c["spacing"] for c in cases], dtype=float)
    dims = spacings.shape[1]
    for key, value in (("data.patch_size", data.patch_size), ("inference.patch_size", config.inference.patch_size),
                       ("data.spacing", data.spacing)):
        if isinstance(value, (list, tuple)) and len(value) not in ((dims, 1) if key == "data.spacing" else (dims,)):
            raise ValueError(f"{key}={list(value)}: {len(value)} sides, but the data is {dims}-D (e.g. "
                             f"{cases[0]['case']} has {dims} spatial axes); give {dims} values")
    divisor = config.model.first_stride * 2 ** (len(config.model.channels) - 1)
    budget = int(data.voxel_budget or VOXEL_BUDGET["cuda" if str(device).startswith("cuda") else "cpu"])
    target, spacing_rule = _target_spacing(spacings)
    target, coverage_rule = _coarsen_for_coverage(cases, target, divisor, budget)
    spacing_rule += coverage_rule

    def pick(key: str, value: Any, planned_value: Any) -> tuple[Any, str]:
        return (planned_value, "plan") if value == "auto" else (value, "config")

    resolved, source = {}, {}
    resolved["spacing"], source["spacing"] = pick("spacing", data.spacing, target)
    if resolved["spacing"] is not None:
        resolved["spacing"] = [float(v) for v in resolved["spacing"]]
        if len(resolved["spacing"]) == 1:
            resolved["spacing"] *= len(target)
    cropped = _cropped_shapes(cases, resolved["spacing"])  # the patch is planned on the grid the run uses
    median_shape = np.median(cropped, axis=0)
    dataset_voxels = float(np.sum(np.prod(cropped, axis=1)))
    patch, batch = _patch_and_batch(median_shape, divisor, budget, dataset_voxels)
    ct = fingerprint["modality"] == "ct"
    body = float(np.median([c["body_fraction"] for c in cases]))
    planned = {"spacing": target, "patch_size": patch, "batch_size": batch,
               "intensity": "ct" if ct else "zscore", "normalisation_mask": bool(ct or body < MASK_FRACTION)}
    resolved["patch_size"], source["patch_size"] = pick("patch_size", data.patch_size, patch)
    resolved["patch_size"] = [int(v) for v in resolved["patch_size"]]
    resolved["batch_size"], source["batch_size"] = pick("batch_size", train.batch_size, batch)
    resolved["intensity"], source["intensity"] = pick("intensity", data.intensity, planned["intensity"])
    resolved["normalisation_mask"], source["normalisation_mask"] = pick("mask", data.normalisation_mask,
                                                                        planned["normalisation_mask"])
    statistics = fingerprint.get("label_intensity")
    if resolved["intensity"] == "ct" and statistics is None:
        raise ValueError(f"{data.dataset}: intensity 'ct' needs labelled voxels for its percentiles, and the label "
                         "maps are empty; use data.intensity: ct_window")
    return {
        "dataset": data.dataset, "modality": fingerprint["modality"], "cases": len(cases), "device": str(device),
        "rules": {"spacing": spacing_rule, "network_divisor": divisor, "voxel_budget": budget,
                  "median_body_fraction": round(body, 4), "mask_when_body_below": MASK_FRACTION,
                  "median_cropped_shape": [round(float(v), 1) for v in median_shape]},
        "planned": planned, "resolved": resolved, "source": source,
        "ct_statistics": statistics if resolved["intensity"] == "ct" else None,
        "fingerprint": fingerprint,
    }


def describe_plan(plan: dict[str, Any]) -> str:
    """A few human-readable lines: each resolved value, where it came from, and the planner's proposal."""
    lines = [f"plan for {plan['dataset']} ({plan['cases']} cases, modality {plan['modality']}, {plan['device']})"]
    for key, value in plan["resolved"].items():
        origin = plan["source"][key]
        note = "" if origin == "plan" else f" (from the config; planned {plan['planned'][key]})"
        lines.append(f"  {key}: {value}{note}")
    rules = plan["rules"]
    lines.append(f"  spacing rule: {rules['spacing']}; median cropped shape at the run's spacing "
                 f"{rules['median_cropped_shape']}; voxel budget {rules['voxel_budget']}")
    lines.append(f"  median body fraction {rules['median_body_fraction']} (mask used below "
                 f"{rules['mask_when_body_below']})")
    if plan.get("ct_statistics"):
        stats = plan["ct_statistics"]
        lines.append(f"  CT: clip to [{stats['p0.5']}, {stats['p99.5']}] HU, mean {stats['mean']}, sd {stats['std']}")
    crops = [c["crop_fraction"] for c in plan["fingerprint"]["cases"]]
    lines.append(f"  the body crop removes {100 * float(np.median(crops)):.0f} % of the median case")
    return "\n".join(lines)


def save_plan(plan: dict[str, Any], path: str | Path) -> Path:
    """Write ``plan.json`` (atomically)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(plan, indent=2, allow_nan=False) + "\n")
    return path
