"""Per-lesion statistics of a predicted case: one row per lesion of each lesion structure, and its instance map.

A *lesion* is a connected component of a structure's mask, found by
:func:`~medseg_attn.segmentation.measures.lesions.label_lesions` (26-connected in 3D, 8-connected in 2D), the same
components lesion-wise evaluation matches. Lesions are numbered in ``scipy.ndimage.label``'s raster order: 1..N in
the first lesion structure (in class order), N+1.. in the next, so that every lesion of a case has its own number,
the value it holds in the case's instance map (``<case>_instances.nii.gz``, uint16: at most 65,535 lesions).

Each row (:func:`lesion_columns`): the case, structure and class value, the lesion's number, voxels, volume in ml
(voxels x the absolute determinant of the affine / 1000), the centroid of its voxel centres in scanner coordinates
(``centroid_ras_mm_x/y/z``: the affine's world, NIfTI's RAS+ in mm, as every reader of the package returns it), the
extent of its bounding box along the world axes in mm (``bbox_rl_mm``, ``bbox_ap_mm``, ``bbox_si_mm``, as
``statistics.csv`` measures a structure: voxel faces), the mean intensity of each input channel inside it (original
values as read: HU for CT models), and the mean probability of the structure and mean uncertainty inside it when
those maps were computed (empty otherwise). See ``docs/statistics.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from medseg_attn.errors import UserError
from medseg_attn.segmentation.measures.lesions import MAX_LESIONS, label_lesions
from medseg_attn.segmentation.measures.structure_statistics import _full_affine, _round, _world_extent

__all__ = ["LesionTable", "lesion_columns", "lesion_summary", "lesion_table", "summary_columns"]

CENTROID_COLUMNS = ("centroid_ras_mm_x", "centroid_ras_mm_y", "centroid_ras_mm_z")
BBOX_COLUMNS = ("bbox_rl_mm", "bbox_ap_mm", "bbox_si_mm")


def _intensity_columns(channels: int, unit: str | None) -> list[str]:
    suffix = f"_{unit}" if unit else ""
    return [f"intensity_mean_ch{c}{suffix}" for c in range(channels)]


def lesion_columns(channels: int = 1, unit: str | None = None) -> tuple[str, ...]:
    """The columns of ``<case>_lesions.csv`` and ``lesion_statistics.csv`` (``channels``: the model's input
    channels, one intensity column each; ``unit`` 'hu' for CT models)."""
    return ("case", "structure", "label", "lesion", "voxels", "volume_ml", *CENTROID_COLUMNS, *BBOX_COLUMNS,
            *_intensity_columns(channels, unit), "probability_mean", "uncertainty_mean")


@dataclass
class LesionTable:
    """The lesions of one case: ``rows`` (keyed by ``columns``, :func:`lesion_columns`) and the ``instances`` map
    (int32, 0 outside lesions, each lesion its row's ``lesion`` number)."""

    rows: list[dict[str, Any]]
    instances: np.ndarray
    columns: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.rows)


def lesion_table(labels: np.ndarray, affine: np.ndarray, structures: Mapping[int, str],
                 images: np.ndarray | None = None, probabilities: Mapping[int, np.ndarray] | None = None,
                 uncertainty: np.ndarray | None = None, unit: str | None = None, case: str = "case",
                 channels: int | None = None, limit: int | None = MAX_LESIONS) -> LesionTable:
    """The lesions of the lesion ``structures`` of one label map (see the module docstring).

    Args:
        labels: (*S) integer label map, S 2D or 3D.
        affine: its voxel-to-world (RAS) affine, 4x4 (3x3 for 2D), mm.
        structures: class value -> name of each lesion structure.
        images: (C, *S) the input's channels as read (None: empty intensity columns, ``channels`` of them).
        probabilities: class value -> (*S) probability of that structure (None or a value left out: empty).
        uncertainty: (*S) uncertainty map (None: empty).
        unit: suffix of the intensity columns ('hu' for CT models).
        case: the case's name, in rows and messages.
        channels: intensity columns when ``images`` is None (default 1).
        limit: most lesions of the case together (the instance map is uint16); None: any number.

    Raises:
        UserError: arrays of different grids, a singular affine, or more than ``limit`` lesions (nothing is
            returned, so nothing of the case gets written).
    """
    labels = np.asarray(labels)
    dims = labels.ndim
    if dims not in (2, 3):
        raise UserError(f"{case}: label map of shape {labels.shape}; expected 2D or 3D")
    if images is not None:
        images = np.asarray(images)
        images = images[None] if images.ndim == dims else images
        if images.shape[1:] != labels.shape:
            raise UserError(f"{case}: image of shape {images.shape} differs from the label map {labels.shape}")
    maps = {"uncertainty": uncertainty, **{f"probability of class {k}": v for k, v in (probabilities or {}).items()}}
    for role, array in maps.items():
        if array is not None and np.shape(array) != labels.shape:
            raise UserError(f"{case}: {role} of shape {np.shape(array)} differs from the label map {labels.shape}")
    full = _full_affine(affine, dims)
    voxel_ml = abs(float(np.linalg.det(full[:3, :3]))) / 1000.0
    if not voxel_ml > 0:
        raise UserError(f"{case}: the affine is singular")
    channels = images.shape[0] if images is not None else (channels or 1)
    intensity_keys = _intensity_columns(channels, unit)
    instances = np.zeros(labels.shape, np.int32)
    rows: list[dict[str, Any]] = []
    for index, name in sorted(structures.items()):
        ids, count = label_lesions(labels == index, 26, what=f"{case}: {name}", limit=None)
        if limit is not None and len(rows) + count > limit:
            raise UserError(f"{case}: {len(rows) + count} lesions ({name}: {count}); an instance map holds at most "
                            f"{limit:,} (uint16): is this a noise map rather than a lesion segmentation?")
        if not count:
            continue
        where = np.nonzero(ids)
        which = ids[where]
        voxels = np.bincount(which, minlength=count + 1)[1:]

        def means(values: np.ndarray, which=which, voxels=voxels, count=count) -> np.ndarray:
            return np.bincount(which, weights=np.asarray(values, np.float64), minlength=count + 1)[1:] / voxels

        centre = np.stack([means(axis) for axis in where])  # (dims, count) voxel indices
        world = full[:3, :dims] @ centre + full[:3, 3:4]  # (3, count) mm
        intensity = [means(images[c][where]) for c in range(channels)] if images is not None else None
        probability = (probabilities or {}).get(index)
        probability = means(np.asarray(probability)[where]) if probability is not None else None
        uncertain = means(np.asarray(uncertainty)[where]) if uncertainty is not None else None
        boxes = ndimage.find_objects(ids, max_label=count)
        offset = len(rows)
        instances[where] = which + offset
        for k in range(count):
            row: dict[str, Any] = {"case": case, "structure": name, "label": int(index), "lesion": offset + k + 1,
                                   "voxels": int(voxels[k]), "volume_ml": _round(voxels[k] * voxel_ml, 6)}
            row.update(zip(CENTROID_COLUMNS, (_round(v, 3) for v in world[:, k]), strict=True))
            row.update(zip(BBOX_COLUMNS, (_round(e, 3) for e in _world_extent(boxes[k], full)), strict=True))
            row.update({key: None if intensity is None else _round(intensity[c][k])
                        for c, key in enumerate(intensity_keys)})
            row["probability_mean"] = None if probability is None else _round(probability[k], 6)
            row["uncertainty_mean"] = None if uncertain is None else _round(uncertain[k], 6)
            rows.append(row)
    return LesionTable(rows, instances, lesion_columns(channels, unit))


def summary_columns(structures: Mapping[int, str] | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The columns of ``report.csv`` per lesion structure: ``lesions_<name>`` and ``lesion_volume_ml_<name>``."""
    names = structures.values() if isinstance(structures, Mapping) else structures
    return tuple(column for name in names for column in (f"lesions_{name}", f"lesion_volume_ml_{name}"))


def lesion_summary(rows: list[dict[str, Any]], names: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Per lesion structure name: ``{"lesions": count, "volume_ml": total}`` of a case's rows (0 and 0.0 when it
    has none; rows read back from a CSV hold strings, counted the same)."""
    summary = {name: {"lesions": 0, "volume_ml": 0.0} for name in names}
    for row in rows:
        entry = summary.setdefault(str(row["structure"]), {"lesions": 0, "volume_ml": 0.0})
        entry["lesions"] += 1
        entry["volume_ml"] += float(row["volume_ml"] or 0.0)
    return {name: {"lesions": e["lesions"], "volume_ml": round(e["volume_ml"], 6)} for name, e in summary.items()}
