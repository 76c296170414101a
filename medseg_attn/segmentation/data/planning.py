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
where. The plan is a :class:`Plan` (frozen records: :class:`PlanValues` for the planned and the resolved values,
:class:`PlanSources`, :class:`PlanRules`, :class:`IntensityStats`); :meth:`Plan.to_dict` is ``plan.json`` in
the run, :meth:`Plan.checkpoint_dict` the part stored in the checkpoint (both in the key order of the files
written before the records), and :meth:`Plan.from_dict` reads either back. Prediction uses the checkpoint's
preprocessing unchanged.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg_attn.config import Config
from medseg_attn.errors import UserError
from medseg_attn.io.files import atomic_write_text
from medseg_attn.io.readers import LoadVolumed
from medseg_attn.segmentation.data.foreground import body_mask

logger = logging.getLogger(__name__)

__all__ = ["ANISOTROPY", "COVERAGE", "MASK_FRACTION", "MAX_COARSENING", "VOXEL_BUDGET", "IntensityStats", "Plan",
           "PlanRules", "PlanSources", "PlanValues", "case_rng", "dataset_fingerprint", "describe_plan", "make_plan",
           "pooled_fingerprint", "save_plan"]

ANISOTROPY = 3.0  # coarsest / finest spacing above which the coarse axis is planned finer than its median
MASK_FRACTION = 0.8  # the z-score is masked when the body covers less than this share of the median case
VOXEL_BUDGET = {"cpu": 2 * 64**3, "cuda": 2 * 128**3}  # batch x patch voxels per optimizer step
COVERAGE = 0.25  # the planned spacing is coarsened until the patch covers this share of the median case ...
MAX_COARSENING = 2.0  # ... but at most this factor per axis
SAMPLES_PER_CASE = 10_000  # labelled voxels sampled per case for the CT statistics


def _plain(value: Any) -> Any:
    """A field as JSON: tuples as lists, records as their dicts."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value.to_dict() if hasattr(value, "to_dict") else value


def _keys(values: Any, known: tuple[str, ...], required: tuple[str, ...], where: str) -> dict[str, Any]:
    """``values`` when it is a mapping with only ``known`` keys and all ``required`` ones, else a ValueError."""
    if not isinstance(values, dict):
        raise UserError(f"{where}: expected a mapping, got {type(values).__name__}")
    unknown = [key for key in values if key not in known]
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
    missing = [key for key in required if key not in values]
    if missing:
        raise UserError(f"{where}: missing key {missing[0]!r}")
    return values


def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


class _Record:
    """``to_dict``: the fields in declaration order, which is the key order of the files."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class PlanValues(_Record):
    """One value per planned setting: the planner's proposal (``planned``) or what the run uses (``resolved``)."""

    spacing: tuple[float, ...] | None  # target mm per voxel; None (resolved only): each case keeps its own
    patch_size: tuple[int, ...]
    batch_size: int
    intensity: str  # ct, zscore, ct_window or none
    normalisation_mask: bool

    @classmethod
    def from_dict(cls, values: Any, where: str = "plan") -> PlanValues:
        names = _names(cls)
        values = _keys(values, names, names, where)
        spacing = values["spacing"]
        return cls(None if spacing is None else tuple(float(v) for v in spacing),
                   tuple(int(v) for v in values["patch_size"]), int(values["batch_size"]), str(values["intensity"]),
                   bool(values["normalisation_mask"]))


@dataclass(frozen=True)
class PlanSources(_Record):
    """Where each resolved value came from: 'plan' (planned) or 'config' (set in the config)."""

    spacing: str
    patch_size: str
    batch_size: str
    intensity: str
    normalisation_mask: str

    @classmethod
    def from_dict(cls, values: Any, where: str = "plan") -> PlanSources:
        names = _names(cls)
        return cls(**{key: str(value) for key, value in _keys(values, names, names, where).items()})


@dataclass(frozen=True)
class PlanRules(_Record):
    """How the plan was made: the spacing rule (text), the network's divisor, the voxel budget, the body fraction
    (and the mask threshold) and the median cropped shape at the run's spacing."""

    spacing: str
    network_divisor: int
    voxel_budget: int
    median_body_fraction: float
    mask_when_body_below: float
    median_cropped_shape: tuple[float, ...]

    RENAMED = {"median_cropped_shape_at_target": "median_cropped_shape"}  # plans written before the rename

    @classmethod
    def from_dict(cls, values: Any, where: str = "plan") -> PlanRules:
        if isinstance(values, dict):
            values = {cls.RENAMED.get(key, key): value for key, value in values.items()}
        names = _names(cls)
        values = _keys(values, names, names, where)
        return cls(str(values["spacing"]), int(values["network_divisor"]), int(values["voxel_budget"]),
                   float(values["median_body_fraction"]), float(values["mask_when_body_below"]),
                   tuple(float(v) for v in values["median_cropped_shape"]))


@dataclass(frozen=True)
class IntensityStats:
    """Labelled-voxel intensities of a CT dataset: mean, standard deviation, percentiles 0.5 and 99.5 (HU)."""

    mean: float
    std: float
    p0_5: float
    p99_5: float

    KEYS = ("mean", "std", "p0.5", "p99.5")  # the keys in plan.json, in the order of the fields

    def to_dict(self) -> dict[str, float]:
        return dict(zip(self.KEYS, (self.mean, self.std, self.p0_5, self.p99_5), strict=True))

    @classmethod
    def from_dict(cls, values: Any, where: str = "plan") -> IntensityStats:
        values = _keys(values, cls.KEYS, cls.KEYS, where)
        return cls(*(float(values[key]) for key in cls.KEYS))


@dataclass(frozen=True, kw_only=True)
class Plan(_Record):
    """The plan of a run (see the module docstring); the fields are in the key order of ``plan.json``.

    ``dataset``, ``modality``, ``cases``, ``device`` and ``fingerprint`` are None for a plan read from a checkpoint
    (which keeps only :data:`CHECKPOINT_KEYS`); ``ct_statistics`` is None unless the resolved intensity is 'ct'.
    """

    dataset: str | None = None
    modality: str | None = None
    cases: int | None = None  # training cases fingerprinted
    device: str | None = None  # whose voxel budget was planned for
    rules: PlanRules
    planned: PlanValues
    resolved: PlanValues
    source: PlanSources
    ct_statistics: IntensityStats | None = None
    fingerprint: dict[str, Any] | None = field(default=None, hash=False)  # :func:`dataset_fingerprint`'s dict

    CHECKPOINT_KEYS = ("planned", "resolved", "source", "rules", "ct_statistics")  # and their order there

    def checkpoint_dict(self) -> dict[str, Any]:
        """The part of the plan stored in a checkpoint (its ``plan``), as training has always stored it."""
        values = self.to_dict()
        return {key: values[key] for key in self.CHECKPOINT_KEYS}

    @classmethod
    def from_dict(cls, values: Any, where: str = "plan") -> Plan:
        """A plan from ``plan.json`` or a checkpoint's ``plan`` (any version written so far).

        Raises:
            ValueError: naming ``where`` and the key, for a key the plan does not know or a missing record.
        """
        names = _names(cls)
        values = _keys(values, names, ("rules", "planned", "resolved", "source"), where)
        stats, cases = values.get("ct_statistics"), values.get("cases")
        text = {key: None if values.get(key) is None else str(values[key]) for key in ("dataset", "modality", "device")}
        return cls(**text, cases=None if cases is None else int(cases),
                   rules=PlanRules.from_dict(values["rules"], f"{where}: rules"),
                   planned=PlanValues.from_dict(values["planned"], f"{where}: planned"),
                   resolved=PlanValues.from_dict(values["resolved"], f"{where}: resolved"),
                   source=PlanSources.from_dict(values["source"], f"{where}: source"),
                   ct_statistics=None if stats is None else IntensityStats.from_dict(stats, f"{where}: ct_statistics"),
                   fingerprint=values.get("fingerprint"))


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
    cropped = [int(b[-1] - b[0] + 1) if b.size else int(n) for b, n in zip(box, mask.shape, strict=True)]
    inside = image[0][mask]
    labelled = image[0][label > 0]
    if labelled.size:
        labelled = rng.choice(labelled, size=min(SAMPLES_PER_CASE, labelled.size), replace=False)
    sample = labelled
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
        raise UserError("no cases to fingerprint")
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


def make_plan(fingerprint: dict[str, Any], config: Config, device: str = "cpu") -> Plan:
    """The plan for ``fingerprint``: every value planned, then replaced by the config's where it sets one.

    Returns:
        The :class:`Plan`: the planned values, the resolved values (what the run uses), where each came from, the
        rules and the fingerprint (``plan.to_dict()`` is the JSON of ``plan.json``).
    """
    data, train = config.data, config.train
    cases = fingerprint["cases"]
    spacings = np.array([c["spacing"] for c in cases], dtype=float)
    dims = spacings.shape[1]
    for key, value in (("data.patch_size", data.patch_size), ("inference.patch_size", config.inference.patch_size),
                       ("data.spacing", data.spacing)):
        if isinstance(value, (list, tuple)) and len(value) not in ((dims, 1) if key == "data.spacing" else (dims,)):
            raise UserError(f"{key}={list(value)}: {len(value)} sides, but the data is {dims}-D (e.g. "
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
        raise UserError(f"{data.dataset}: intensity 'ct' needs labelled voxels for its percentiles, and the label "
                         "maps are empty; use data.intensity: ct_window")
    return Plan(
        dataset=data.dataset, modality=fingerprint["modality"], cases=len(cases), device=str(device),
        rules=PlanRules(spacing_rule, divisor, budget, round(body, 4), MASK_FRACTION,
                        tuple(round(float(v), 1) for v in median_shape)),
        planned=PlanValues.from_dict(planned), resolved=PlanValues.from_dict(resolved),
        source=PlanSources.from_dict(source),
        ct_statistics=IntensityStats.from_dict(statistics) if resolved["intensity"] == "ct" else None,
        fingerprint=fingerprint,
    )


def describe_plan(plan: Plan) -> str:
    """A few human-readable lines: each resolved value, where it came from, and the planner's proposal."""
    lines = [f"plan for {plan.dataset} ({plan.cases} cases, modality {plan.modality}, {plan.device})"]
    planned, sources = plan.planned.to_dict(), plan.source.to_dict()
    for key, value in plan.resolved.to_dict().items():  # as in plan.json: lists, not tuples
        note = "" if sources[key] == "plan" else f" (from the config; planned {planned[key]})"
        lines.append(f"  {key}: {value}{note}")
    rules = plan.rules
    lines.append(f"  spacing rule: {rules.spacing}; median cropped shape at the run's spacing "
                 f"{list(rules.median_cropped_shape)}; voxel budget {rules.voxel_budget}")
    lines.append(f"  median body fraction {rules.median_body_fraction} (mask used below "
                 f"{rules.mask_when_body_below})")
    if plan.ct_statistics:
        stats = plan.ct_statistics
        lines.append(f"  CT: clip to [{stats.p0_5}, {stats.p99_5}] HU, mean {stats.mean}, sd {stats.std}")
    if plan.fingerprint:
        crops = [c["crop_fraction"] for c in plan.fingerprint["cases"]]
        lines.append(f"  the body crop removes {100 * float(np.median(crops)):.0f} % of the median case")
    return "\n".join(lines)


def save_plan(plan: Plan, path: str | Path) -> Path:
    """Write ``plan.json`` (atomically): :meth:`Plan.to_dict`, the layout of every plan.json so far."""
    path = Path(path)
    atomic_write_text(path, json.dumps(plan.to_dict(), indent=2, allow_nan=False) + "\n")
    return path
