"""The training set's fingerprint, kept in the checkpoint, and the QC flags that compare a case with it.

Batch-relative flags (a case against the other cases of the same batch) fire on good cases of a small or mixed
batch, and the plan's working grid is not what the model was trained on (it may be coarsened 2x). So a training
run stores ``payload["training_fingerprint"]``: for every training case, measured on the ORIGINAL image (read as
stored, reoriented to RAS) and its reference label map:

* ``spacing``: the voxel spacing (mm, RAS axis order); a case is flagged when 1.5x coarser than the coarsest
  or 4x finer than the finest;
* ``intensity``: percentiles 1 / 50 / 99 inside the body mask (HU for CT models; for other models divided by the
  99th percentile, as MR intensities have no unit);
* ``profile``: along each RAS axis, the body's cross-section area and mean intensity (/ p99) in 16 bins over
  its extent; the training mean is kept, and a case whose profile along an asymmetric axis (one whose mean
  profile differs from its own reversal by >= ``min_asymmetry``) lies closer to the reversed mean than to the
  mean is flagged: an axis flipped in the header (a head stored upside down). A left-right flip of a symmetric
  body part cannot be seen this way;
* per structure: volume (ml), connected components (26-connected) and the share of the largest.

:func:`fingerprint_flags` compares one predicted case with the stored ranges, widened by tolerances (see
:data:`TOLERANCES`): ``geometry`` (spacing, orientation), ``intensity``, ``volume`` and ``fragmented``. With a
fingerprint the QC report uses these instead of the batch-relative volume / intensity checks and the fixed
fragmentation limits; an older checkpoint without one keeps the previous behaviour. See ``docs/trust.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from medseg_attn.segmentation.qc.review import Flag

logger = logging.getLogger(__name__)

__all__ = ["TOLERANCES", "case_features", "fingerprint_flags", "summarise", "training_case_features"]

FINGERPRINT_VERSION = 2  # 2: images above MAX_VOXELS measured on every k-th voxel
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
PERCENTILES = (1.0, 50.0, 99.0)
BINS = 16
CAP = 5.0
MAX_VOXELS = 1 << 22  # features of larger images are measured on every k-th voxel (same k for training and QC)


def _ras(image: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image in RAS axis order (flips and transposes only) and its spacing in that order."""
    import nibabel as nib

    from medseg_attn.io.volumes import affine_4x4

    dims = image.ndim
    full = affine_4x4(affine, dims)
    ornt = nib.orientations.io_orientation(full)[:dims]
    spacing = np.sqrt((full[:3, :3] ** 2).sum(0))[:dims]
    order = ornt[:, 0].astype(int)  # output axis of each input axis
    ras_spacing = np.empty(dims)
    ras_spacing[order] = spacing
    return nib.orientations.apply_orientation(image, ornt), ras_spacing


def case_features(image: np.ndarray, affine: np.ndarray, ct: bool, rows: Sequence[dict[str, Any]] = ()
                  ) -> dict[str, Any]:
    """One case's features (see the module docstring).

    Args:
        image: (*S) the case's first channel as stored (HU for CT).
        affine: its voxel-to-world RAS affine.
        ct: a CT model (HU thresholds and units).
        rows: the case's structure rows
            (:func:`~medseg_attn.segmentation.evaluation.structure_statistics.structure_rows`).
    """
    from medseg_attn.segmentation.data.foreground import body_mask

    ras, spacing = _ras(np.asarray(image, dtype=np.float32), np.asarray(affine, dtype=np.float64))
    step = max(1, int(np.ceil((ras.size / MAX_VOXELS) ** (1 / ras.ndim))))  # 512^2 x 200: every 4th voxel
    ras = np.ascontiguousarray(ras[(slice(None, None, step),) * ras.ndim])  # percentiles and profiles barely move
    mask = body_mask(ras[None], ct=ct)
    inside = ras[mask]
    values = np.percentile(inside, PERCENTILES) if inside.size else np.zeros(len(PERCENTILES))
    if not ct:
        values = values / max(abs(float(values[-1])), 1e-6)
    scale = max(abs(float(np.percentile(inside, 99))), 1e-6) if inside.size else 1.0
    profile = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        area = mask.sum(axis=others).astype(np.float64)
        mean = np.where(mask, ras, 0).sum(axis=others) / np.maximum(area, 1) / scale
        where = np.flatnonzero(area)
        lo, hi = (where[0], where[-1] + 1) if where.size else (0, area.size)
        grid = np.linspace(0, 1, BINS)
        binned = [np.interp(grid, np.linspace(0, 1, hi - lo), values[lo:hi]) if hi - lo > 1
                  else np.full(BINS, values[lo]) for values in (area / max(area.max(), 1), mean)]
        profile.append([round(float(v), 4) for v in np.concatenate(binned)])
    structures = {row["structure"]: {"volume_ml": row["volume_ml"] or 0.0, "components": int(row["components"] or 0),
                                     "largest_share": float(row["largest_component_share"] or 1.0)}
                  for row in rows}
    return {"spacing": [round(float(s), 4) for s in spacing], "intensity": [round(float(v), 4) for v in values],
            "profile": profile, "structures": structures}


def training_case_features(case: dict[str, Any], labels: dict[int, str], ct: bool) -> dict[str, Any]:
    """Read one training case (``{"image", "label", "case"}``) and return its :func:`case_features`."""
    from medseg_attn.io.readers import LoadVolumed
    from medseg_attn.segmentation.evaluation.structure_statistics import structure_rows
    from medseg_attn.segmentation.inference.resample import spatial_affine

    names = {int(k): v for k, v in labels.items() if int(k) != 0}
    data = LoadVolumed(["image", "label"])({"image": case["image"], "label": case["label"]})
    image, label = np.asarray(data["image"])[0], np.asarray(data["label"])[0]
    affine = spatial_affine(data["image"].affine, image.ndim)
    rows = structure_rows(np.rint(label).astype(np.int32), affine, names, case=str(case["case"]))
    return case_features(image, affine, ct, rows)


def summarise(features: Sequence[dict[str, Any]], ct: bool) -> dict[str, Any]:
    """The stored fingerprint: min and max of each feature over the training cases (their
    :func:`training_case_features`, which training computes once per case in workers and keeps in the cache:
    :func:`medseg_attn.segmentation.data.preprocess.training_fingerprint`)."""
    def span(values: list[Any]) -> dict[str, list[float]]:
        array = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
        return {"min": [round(float(v), 4) for v in array.min(0)], "max": [round(float(v), 4) for v in array.max(0)]}

    names = list(dict.fromkeys(name for f in features for name in f["structures"]))
    structures = {}
    for name in names:
        present = [f["structures"][name] for f in features if f["structures"].get(name, {}).get("volume_ml")]
        if present:
            structures[name] = {"volume_ml": span([p["volume_ml"] for p in present]),
                                "components": span([p["components"] for p in present]),
                                "largest_share": span([p["largest_share"] for p in present])}
    return {"version": FINGERPRINT_VERSION, "cases": len(features), "ct": ct,
            "spacing": span([f["spacing"] for f in features]), "intensity": span([f["intensity"] for f in features]),
            "profile": np.round(np.mean([f["profile"] for f in features], axis=0), 4).tolist(),
            "structures": structures}


def fingerprint_flags(case: dict[str, Any], fingerprint: dict[str, Any], tolerances: dict[str, float] | None = None
                      ) -> list[Flag]:
    """Flags of one case's :func:`case_features` against the training fingerprint (severities 1 to ``CAP``)."""
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
