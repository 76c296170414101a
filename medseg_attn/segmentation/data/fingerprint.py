"""The training set's fingerprint, kept in the checkpoint, and the QC flags that compare a case with it.

Batch-relative flags (a case against the other cases of the same batch) fire on good cases of a small or mixed
batch, and the plan's working grid is not what the model was trained on (it may be coarsened 2x). So a training
run stores the checkpoint's ``training_fingerprint``: for every training case, measured on the ORIGINAL image (read as
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

:func:`medseg_attn.segmentation.qc.fingerprint.fingerprint_flags` compares one predicted case with the stored
ranges, widened by tolerances (:data:`medseg_attn.segmentation.qc.fingerprint.TOLERANCES`): ``geometry`` (spacing,
orientation), ``intensity``, ``volume`` and ``fragmented``. With a fingerprint the QC report uses these instead of
the batch-relative volume / intensity checks and the fixed fragmentation limits; an older checkpoint without one
keeps the previous behaviour. See ``docs/trust.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from medseg_attn.segmentation.data.foreground import body_mask

logger = logging.getLogger(__name__)

__all__ = ["FINGERPRINT_VERSION", "case_features", "summarise", "training_case_features"]

FINGERPRINT_VERSION = 2  # 2: images above MAX_VOXELS measured on every k-th voxel
PERCENTILES = (1.0, 50.0, 99.0)
BINS = 16
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
            (:func:`~medseg_attn.segmentation.measures.structure_statistics.structure_rows`).
    """
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
    from medseg_attn.io.volumes import spatial_affine
    from medseg_attn.segmentation.measures.structure_statistics import structure_rows

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
