"""The QC flags that compare a predicted case with the training set's fingerprint
(:mod:`medseg_attn.segmentation.data.fingerprint`: what is measured, and why; ``docs/trust.md``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medseg_attn.segmentation.data.fingerprint import BINS
from medseg_attn.segmentation.qc.review import Flag

__all__ = ["TOLERANCES", "fingerprint_flags", "flip_scores"]

TOLERANCES = {
    "spacing_factor": 1.5,  # a spacing up to 1.5x coarser than the coarsest trained (detail the model never saw lost)
    "fine_factor": 4.0,  # ... and up to 4x finer than the finest (finer inputs are resampled down: harmless)
    "intensity_margin": 0.25,  # x the training's typical p1..p99 range beyond the training's range of a percentile
    "flip_margin": 0.005,  # mean |profile - mean| minus mean |profile - reversed mean| above this: flipped axis
    "min_asymmetry": 0.03,  # axes whose mean profile differs less from its reversal are not judged
    "volume_factor": 1.5,  # structure volume: 1.5x below the smallest / above the largest trained
    "components_factor": 3.0,  # components: above 3x the training's most and at least ``components_extra`` more
    "components_extra": 20,  # (a prediction's stray specks of a few voxels are not fragmentation)
    "share_margin": 0.15,  # largest component's share: this far below the training's lowest
}
CAP = 5.0


def fingerprint_flags(case: dict[str, Any], fingerprint: dict[str, Any], tolerances: dict[str, float] | None = None
                      ) -> list[Flag]:
    """Flags of one case's
    :func:`~medseg_attn.segmentation.data.fingerprint.case_features` against the training fingerprint
    (severities 1 to ``CAP``)."""
    tol = {**TOLERANCES, **(tolerances or {})}
    flags: list[Flag] = []

    def flag(kind: str, severity: float, detail: str, measure: str, structure: str | None = None) -> None:
        flags.append(Flag(kind, round(min(CAP, max(1.0, severity)), 3), detail, structure, measure))

    low, high = fingerprint["spacing"]["min"], fingerprint["spacing"]["max"]
    if len(case["spacing"]) == len(low):
        ratios = [max(lo / s / tol["fine_factor"], s / hi / tol["spacing_factor"], 0.0)
                  for s, lo, hi in zip(case["spacing"], low, high, strict=True)]
        if max(ratios) > 1.0:
            flag("geometry", max(ratios),
                 f"spacing {_listing(case['spacing'])} mm (RAS) outside the training's "
                 f"{_listing(low)} .. {_listing(high)} mm", "spacing")
    for axis, score, asymmetry in flip_scores(case["profile"], fingerprint["profile"]):
        if asymmetry >= tol["min_asymmetry"] and score > tol["flip_margin"]:
            flag("geometry", 1 + score / (2 * tol["flip_margin"]),
                 f"the body's profile along {'RAS'[axis]} matches the training's reversed ({score:+.3f}): an axis "
                 f"flipped in the header (stored upside down)?", "orientation")
    low, high = fingerprint["intensity"]["min"], fingerprint["intensity"]["max"]
    scale = max((high[-1] + low[-1]) / 2 - (high[0] + low[0]) / 2, 1e-6)  # the training's typical p1 .. p99 span
    offs = [max(lo - v, v - hi, 0.0) / scale for v, lo, hi in zip(case["intensity"], low, high, strict=True)]
    if max(offs) > tol["intensity_margin"]:
        unit = " HU" if fingerprint.get("ct") else " (/ p99)"
        flag("intensity", max(offs) / tol["intensity_margin"],
             f"body percentiles 1/50/99 {_listing(case['intensity'])}{unit} vs the training's "
             f"{_listing(low)} .. {_listing(high)}", "body_percentiles")
    for name, trained in fingerprint["structures"].items():
        found = case["structures"].get(name)
        if not found or not found["volume_ml"]:
            continue  # an empty structure is the 'empty' flag's
        volume, (vlo,), (vhi,) = found["volume_ml"], trained["volume_ml"]["min"], trained["volume_ml"]["max"]
        factor = max(vlo / max(volume, 1e-9), volume / max(vhi, 1e-9))
        if factor > tol["volume_factor"]:
            flag("volume", factor / tol["volume_factor"],
                 f"{name}: {volume:.4g} ml outside the training's {vlo:.4g} .. {vhi:.4g} ml", "volume_ml", name)
        most = trained["components"]["max"][0]
        limit = max(most * tol["components_factor"], most + tol["components_extra"])
        lowest = trained["largest_share"]["min"][0] - tol["share_margin"]
        if found["components"] > limit or found["largest_share"] < lowest:
            flag("fragmented", max(found["components"] / limit, (1 - found["largest_share"]) / max(1 - lowest, 1e-3)),
                 f"{name}: {found['components']} components, largest {100 * found['largest_share']:.0f} % (training: "
                 f"up to {most:.0f} components, largest >= {100 * trained['largest_share']['min'][0]:.0f} %)",
                 "components", name)
    return flags


def flip_scores(profile: Sequence[Sequence[float]], mean: Sequence[Sequence[float]]
                ) -> list[tuple[int, float, float]]:
    """Per axis: (axis, distance to the mean profile - distance to its reversal, the mean's own asymmetry)."""
    out = []
    for axis, (p, m) in enumerate(zip(np.asarray(profile), np.asarray(mean), strict=True)):
        reversed_mean = np.concatenate([m[:BINS][::-1], m[BINS:][::-1]])
        out.append((axis, float(np.abs(p - m).mean() - np.abs(p - reversed_mean).mean()),
                    float(np.abs(m - reversed_mean).mean())))
    return out


def _listing(values: Sequence[float]) -> str:
    return " x ".join(f"{v:.3g}" for v in values)
