"""Flags that rank the cases of a batch for human review, and a score to sort by (see ``docs/statistics.md``).

Each case gets zero or more flags (:class:`Flag` records), each with a severity (>= 1 when raised); the case's
review score is the sum of its severities, so the worst cases come first. A graded flag (every kind but
``failed`` and ``empty``) adds at most ``CAP`` = 5. The flags:

* ``failed``: the case could not be predicted (severity 100);
* ``empty``: a structure of the model has no voxel in the case (severity 10 per structure);
* ``volume``: a structure's volume lies outside the batch's robust range, median +- ``volume_mad_k`` x the scaled
  MAD (1.4826 MAD, at least ``min_relative_spread`` x the median), with at least ``min_batch_cases`` non-empty
  values (severity robust z / k); or outside its ``expected_volume_ml`` range (severity 1 + how many times
  outside);
* ``fragmented``: a structure in more than ``max_components`` connected pieces, or whose largest piece holds less
  than ``min_largest_share`` of its voxels (severity 1 to 5);
* ``uncertainty``: mean uncertainty inside the predicted foreground above the batch's median + k x scaled MAD
  (the spread at least ``uncertainty_min_spread``, uncertainty being in [0, 1]; severity z / k); and, when
  ``max_foreground_uncertainty`` is set (> 0, e.g. the limit ``scripts/stress_eval.py --choose-on`` found for a
  model, see ``docs/trust.md``), above that absolute limit, whatever the batch (severity value / limit);
* ``geometry``: voxel spacing more than ``spacing_factor`` times off the model's planned spacing, or a field of
  view smaller than ``min_patch_fraction`` of a sliding-window patch along an axis;
* ``intensity``: for CT models, an image range (0.5 .. 99.5 percentile) narrower than ``ct_min_range_hu`` (values
  that are not Hounsfield units, e.g. already normalised); for every model, an image median or 99.5 percentile
  more than ``intensity_mad_k`` robust spreads from the batch's (the spread at least ``min_relative_spread`` x
  the batch's median image range).

A model that keeps its training set's fingerprint replaces the batch-relative volume and intensity checks, the
fixed fragmentation limits and the spacing check with flags judged against the training data
(:mod:`medseg_attn.segmentation.qc.fingerprint`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from medseg_attn.errors import UserError

__all__ = ["FLAG_KINDS", "Flag", "ReviewSettings", "flag_cases", "load_review_settings", "plan_flags"]

FLAG_KINDS = ("failed", "empty", "volume", "fragmented", "uncertainty", "geometry", "intensity")
MAD_SCALE = 1.4826  # MAD x this estimates the standard deviation of normal data
CAP = 5.0  # the most one graded flag (volume, fragmented, uncertainty, geometry, intensity) adds


@dataclass(frozen=True)
class Flag:
    """One review flag of a case.

    Attributes:
        kind: one of :data:`FLAG_KINDS`.
        severity: what the flag adds to the case's score (>= 1 when raised; graded kinds at most ``CAP``).
        detail: the reason, for people (the value and the range that raised it).
        structure: the structure the flag is about (``empty``, ``volume``, ``fragmented``); None: the whole case.
        measure: what was measured: a statistics key (``voxels``, ``volume_ml``, ``components``,
            ``uncertainty_foreground_mean``, ``image_p50``, ``image_p99.5``) or ``spacing``, ``field_of_view``,
            ``orientation``, ``image_range``, ``body_percentiles``; None for ``failed``.
    """

    kind: str
    severity: float
    detail: str
    structure: str | None = None
    measure: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """{kind, severity, detail, structure, measure}: what a batch record keeps (see :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Flag:
        """The flag of a :meth:`to_dict` dict (a dict of only {kind, severity, detail} too)."""
        return cls(values["kind"], values["severity"], values["detail"], values.get("structure"),
                   values.get("measure"))


@dataclass(frozen=True)
class ReviewSettings:
    """How the review flags are raised (every key of the ``--review-config`` YAML file)."""

    volume_mad_k: float = 3.5
    uncertainty_mad_k: float = 3.5
    uncertainty_min_spread: float = 0.01
    intensity_mad_k: float = 5.0
    min_relative_spread: float = 0.05
    min_batch_cases: int = 5
    expected_volume_ml: dict[str, tuple[float, float]] = field(default_factory=dict)
    max_components: int = 10
    min_largest_share: float = 0.8
    spacing_factor: float = 2.0
    min_patch_fraction: float = 0.5
    ct_min_range_hu: float = 500.0
    max_foreground_uncertainty: float = 0.0  # > 0: flag a case whose foreground uncertainty is above it (0: off)


def load_review_settings(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ReviewSettings:
    """Settings from a YAML file (the keys of :class:`ReviewSettings`, optionally under ``review:``) and
    ``key=value`` overrides (``volume_mad_k=5``, ``expected_volume_ml.liver=[1200,2400]``; values read as YAML).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown key (a :class:`~medseg_attn.config.sections.ConfigError` naming the closest known
            one), or a value of the wrong kind or range.
    """
    from medseg_attn.config.loading import apply_overrides, check_known_keys

    where = str(path) if path is not None else "--review-set"
    values = _read_review_file(Path(path)) if path is not None else {}
    if set(values) == {"review"}:
        values = values["review"] or {}
    if not isinstance(values, dict):
        raise UserError(f"{where}: expected a mapping of review settings, got {type(values).__name__}")
    for text in overrides:
        if "=" not in text or not text.split("=", 1)[0].strip():
            raise UserError(f"--review-set {text!r}: expected KEY=VALUE, e.g. --review-set volume_mad_k=5")
    values = apply_overrides(values, list(overrides))
    check_known_keys(values, [f.name for f in fields(ReviewSettings)], "review setting", where)
    settings = ReviewSettings()
    for key, value in values.items():
        settings = replace(settings, **{key: _checked(key, value, where)})
    return settings


def _read_review_file(path: Path) -> dict[str, Any]:
    """The ``--review-config`` YAML: a mapping of review settings; a folder, a list or a scalar is refused (a
    one-line ValueError)."""
    import yaml

    from medseg_attn.config.bounded_yaml import safe_load_bounded

    if path.is_dir():
        raise UserError(f"{path}: is a folder; --review-config expects a YAML file of review settings")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: --review-config file not found")
    try:
        values = safe_load_bounded(path.read_text(errors="replace"), str(path)) or {}
    except yaml.YAMLError as error:
        raise UserError(f"{path}: --review-config is not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: --review-config expects a mapping of review settings (e.g. volume_mad_k: 5), got "
                         f"a YAML {type(values).__name__}")
    return values


def _checked(key: str, value: Any, where: str) -> Any:
    if key == "expected_volume_ml":
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected_volume_ml must map structure names to [min_ml, max_ml]")
        ranges = {}
        for name, bounds in value.items():
            if (not isinstance(bounds, (list, tuple)) or len(bounds) != 2
                    or not all(isinstance(b, (int, float)) and math.isfinite(b) for b in bounds)
                    or not 0 <= bounds[0] <= bounds[1]):
                raise UserError(f"{where}: expected_volume_ml.{name} = {bounds!r}; expected [min_ml, max_ml] "
                                 "with 0 <= min_ml <= max_ml")
            ranges[str(name)] = (float(bounds[0]), float(bounds[1]))
        return ranges
    integer = key in ("min_batch_cases", "max_components")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and value != int(value)):
        raise UserError(f"{where}: {key} = {value!r}; expected {'an integer' if integer else 'a number'}")
    share = key in ("min_relative_spread", "min_largest_share", "min_patch_fraction", "uncertainty_min_spread",
                    "max_foreground_uncertainty")
    if not math.isfinite(value) or value < 0 or (share and value > 1) or (key == "spacing_factor" and value < 1):
        limits = "in [0, 1]" if share else (">= 1" if key == "spacing_factor" else ">= 0")
        raise UserError(f"{where}: {key} = {value!r}; expected a number {limits}")
    return int(value) if integer else float(value)


def plan_flags(record: dict[str, Any], plan_spacing: Sequence[float] | None, patch_size: Sequence[int],
               intensity: str, settings: ReviewSettings) -> list[Flag]:
    """Flags of one case's grid and image range against the model's plan (``geometry``, CT ``intensity``).

    Args:
        record: the case's statistics
            (:func:`medseg_attn.segmentation.measures.structure_statistics.case_statistics`).
        plan_spacing: the model's target spacing (mm; None: each input's own).
        patch_size: the sliding-window patch (voxels on the network grid).
        intensity: the model's intensity preset ('ct', 'zscore', 'none').
    """
    flags = []
    spacing = [s for s in record.get("spacing_mm") or [] if s]
    extent = record.get("extent_mm") or []
    if plan_spacing and len(plan_spacing) == len(spacing):
        ratios = [max(s / p, p / s) for s, p in zip(spacing, plan_spacing, strict=True)]
        if max(ratios) > settings.spacing_factor:
            flags.append(Flag("geometry", min(CAP, max(ratios) / settings.spacing_factor),
                              f"spacing {_listing(spacing)} mm vs the model's {_listing(plan_spacing)} mm",
                              measure="spacing"))
    network_spacing = plan_spacing if plan_spacing and len(plan_spacing) == len(spacing) else spacing
    patch_mm = [p * s for p, s in zip(patch_size, network_spacing, strict=True)]
    small = [e / p for e, p in zip(extent, patch_mm, strict=True) if e and p]
    if small and min(small) < settings.min_patch_fraction:
        flags.append(Flag("geometry", min(CAP, settings.min_patch_fraction / max(min(small), 1e-3)),
                          f"field of view {_listing(extent)} mm vs a patch of {_listing(patch_mm)} mm",
                          measure="field_of_view"))
    low, high = record.get("image_p0.5"), record.get("image_p99.5")
    if intensity == "ct" and low is not None and high is not None and high - low < settings.ct_min_range_hu:
        flags.append(Flag("intensity", min(CAP, settings.ct_min_range_hu / max(high - low, 1.0)),
                          f"image range {low:g} .. {high:g} (0.5-99.5 percentile) is narrower than "
                          f"{settings.ct_min_range_hu:g} HU: not Hounsfield units?", measure="image_range"))
    return flags


def _listing(values: Sequence[float]) -> str:
    return " x ".join(f"{v:.3g}" for v in values)


def _robust(values: list[float], settings: ReviewSettings, scale: float | None = None, floor: float = 1e-9
            ) -> tuple[float, float] | None:
    """(median, spread) of a batch's values, None when fewer than ``min_batch_cases`` (and 2); the spread is at least
    ``min_relative_spread`` x ``scale`` (default: the median's magnitude) and at least ``floor``."""
    if len(values) < max(settings.min_batch_cases, 2):
        return None
    median = float(np.median(values))
    spread = MAD_SCALE * float(np.median(np.abs(np.asarray(values) - median)))
    relative = settings.min_relative_spread * abs(median if scale is None else scale)
    return median, max(spread, relative, floor, 1e-9)


def _outliers(cases: list[dict[str, Any]], value, k: float, kind: str, measure: str, label: str,
              settings: ReviewSettings, structure: str | None = None, high_only: bool = False,
              scale: float | None = None, floor: float = 1e-9) -> None:
    """Flag the cases whose ``value(case)`` lies more than k robust spreads from the batch median (the flag's
    detail: ``label`` and the value; ``structure`` and ``measure``: the flag's fields)."""
    present = [(case, value(case)) for case in cases]
    present = [(case, v) for case, v in present if v is not None]
    robust = _robust([v for _, v in present], settings, scale, floor)
    if robust is None:
        return
    median, spread = robust
    for case, v in present:
        z = (v - median) / spread
        if (z if high_only else abs(z)) > k:
            case["flags"].append(Flag(kind, min(CAP, abs(z) / k),
                                      f"{label} {v:.4g}: {'above' if z > 0 else 'below'} the batch's "
                                      f"{median:.4g} +- {k:g} x {spread:.3g}", structure, measure))


def flag_cases(cases: list[dict[str, Any]], settings: ReviewSettings, fingerprinted: bool = False
               ) -> list[dict[str, Any]]:
    """Add ``flags`` (a list of :class:`Flag`) and ``score`` to each case; return them worst first.

    With ``fingerprinted`` (the model keeps its training set's fingerprint, whose flags came in ``plan_flags``,
    see :mod:`medseg_attn.segmentation.qc.fingerprint`) the batch-relative volume and intensity checks and the
    fixed fragmentation limits are left out.

    Args:
        cases: one dict per case: {"case", "status", "error", "statistics" (the case's record or None),
            "plan_flags" (optional: :class:`Flag` s or their :meth:`Flag.to_dict`, as a batch record keeps them:
            :meth:`medseg_attn.segmentation.qc.qc_report.Review.case`)}.
    """
    for case in cases:
        case["flags"] = [Flag.from_dict(f) if isinstance(f, dict) else f for f in case.get("plan_flags") or []]
        if case.get("status") == "failed":
            case["flags"].append(Flag("failed", 100.0, case.get("error") or "failed"))
    measured = [case for case in cases if case.get("statistics")]
    names = list(dict.fromkeys(row["structure"] for case in measured for row in case["statistics"]["structures"]))
    for name in names:
        def row(case, name=name):
            return next((r for r in case["statistics"]["structures"] if r["structure"] == name), None)

        for case in measured:
            found = row(case)
            if found is None:
                continue
            if not found["voxels"]:
                case["flags"].append(Flag("empty", 10.0, f"{name}: no voxel", name, "voxels"))
                continue
            bounds = settings.expected_volume_ml.get(name)
            volume = found["volume_ml"]
            if bounds and not bounds[0] <= volume <= bounds[1]:
                off = bounds[0] / max(volume, 1e-9) if volume < bounds[0] else volume / max(bounds[1], 1e-9)
                case["flags"].append(Flag("volume", min(CAP, 1 + off), f"{name}: {volume:.4g} ml outside the "
                                          f"expected {bounds[0]:g} .. {bounds[1]:g} ml", name, "volume_ml"))
            share = found["largest_component_share"] or 1.0
            if not fingerprinted and (found["components"] > settings.max_components
                                      or share < settings.min_largest_share):
                severity = max(found["components"] / max(settings.max_components, 1),
                               (1 - share) / max(1 - settings.min_largest_share, 1e-6))
                case["flags"].append(Flag("fragmented", min(CAP, max(1.0, severity)),
                                          f"{name}: {found['components']} components, largest {100 * share:.0f} %",
                                          name, "components"))
        if not fingerprinted:
            _outliers(measured, lambda case: (row(case) or {}).get("volume_ml") or None, settings.volume_mad_k,
                      "volume", "volume_ml", f"{name}: volume (ml)", settings, structure=name)
    _outliers(measured, lambda case: case["statistics"].get("uncertainty_foreground_mean"),
              settings.uncertainty_mad_k, "uncertainty", "uncertainty_foreground_mean", "foreground uncertainty",
              settings, high_only=True, floor=settings.uncertainty_min_spread)
    limit = settings.max_foreground_uncertainty
    for case in measured if limit > 0 else ():
        value = case["statistics"].get("uncertainty_foreground_mean")
        if value is not None and value > limit:
            case["flags"].append(Flag("uncertainty", min(CAP, value / limit),
                                      f"foreground uncertainty {value:.3f} above the limit {limit:g}",
                                      measure="uncertainty_foreground_mean"))
    ranges = [case["statistics"]["image_p99.5"] - case["statistics"]["image_p0.5"] for case in measured
              if case["statistics"].get("image_p99.5") is not None]
    for key in () if fingerprinted else ("image_p50", "image_p99.5"):  # spread floor: a share of the image range
        _outliers(measured, lambda case, key=key: case["statistics"].get(key), settings.intensity_mad_k,
                  "intensity", key, f"image {key[6:]} percentile", settings, scale=float(np.median(ranges or [0])))
    for case in cases:
        case["score"] = round(sum(flag.severity for flag in case["flags"]), 3)
    return sorted(cases, key=lambda case: (-case["score"], case["case"]))
