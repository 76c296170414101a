"""Numbers per case and structure for research pipelines: volume, intensity, shape, uncertainty.

For each structure (class) of a label map: voxel count, volume in ml (voxels x the voxel volume, the absolute
determinant of the affine's 3x3 part: the input's own spacing, whatever its orientation), the image intensity
inside it (mean, sd, percentiles; Hounsfield units for CT models, read from the input file before any
normalisation), connected components (26-connected in 3D, 8-connected in 2D) and the share of the largest, the
bounding box's extent in mm along the world axes (right-left, anterior-posterior, superior-inferior), and the mean
uncertainty inside it when an uncertainty map is given. Each case also records its grid and image range (what
:mod:`medseg_attn.segmentation.qc.review` compares with the model's plan).

Per case the statistics are written as JSON (``<case>_statistics.json``), for a batch as one tidy CSV
(``statistics.csv``: one row per case and structure, units in the column names); see ``docs/statistics.md``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medseg_attn.errors import UserError
from medseg_attn.io.files import atomic_write_text
from medseg_attn.io.tables import write_csv

logger = logging.getLogger(__name__)

__all__ = ["PERCENTILES", "case_statistics", "read_case_statistics", "statistics_columns", "structure_rows",
           "write_case_statistics", "write_statistics_csv"]

PERCENTILES = (5, 25, 50, 75, 95)
IMAGE_PERCENTILES = (0.5, 50, 99.5)  # the image's range, for the checks against the model's plan


def _intensity_keys(unit: str | None) -> list[str]:
    suffix = f"_{unit}" if unit else ""
    return ([f"intensity_mean{suffix}", f"intensity_sd{suffix}"]
            + [f"intensity_p{p}{suffix}" for p in PERCENTILES])


def statistics_columns(unit: str | None = "hu") -> tuple[str, ...]:
    """The columns of ``statistics.csv`` (``unit`` 'hu' for CT models, None for other images)."""
    return ("case", "structure", "label", "voxels", "volume_ml", "components", "largest_component_share",
            "bbox_rl_mm", "bbox_ap_mm", "bbox_si_mm", *_intensity_keys(unit), "uncertainty_mean")


def _round(value: float, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def _world_extent(box: tuple[slice, ...], affine: np.ndarray) -> list[float]:
    """Extent in mm along world x, y, z of the voxel box (voxel faces, i.e. centres +- half a voxel)."""
    dims = len(box)
    corners = np.array(np.meshgrid(*[(b.start - 0.5, b.stop - 0.5) for b in box], indexing="ij")).reshape(dims, -1)
    world = affine[:dims, :dims] @ corners  # (dims, 2^dims), translation irrelevant for an extent
    extent = list(world.max(1) - world.min(1))
    return [float(e) for e in extent] + [0.0] * (3 - dims)


def _full_affine(affine: np.ndarray, dims: int) -> np.ndarray:
    from medseg_attn.io.volumes import affine_4x4  # (nibabel only when needed)

    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape == (dims + 1, dims + 1) and dims == 2:
        return affine_4x4(affine)
    if affine.shape != (4, 4):
        raise UserError(f"affine of shape {affine.shape}: expected (4, 4) (or (3, 3) for 2D)")
    return affine


def structure_rows(
    labels: np.ndarray,
    affine: np.ndarray,
    names: dict[int, str],
    image: np.ndarray | None = None,
    uncertainty: np.ndarray | None = None,
    unit: str | None = "hu",
    case: str = "case",
) -> list[dict[str, Any]]:
    """One row per structure of ``names`` (background, class 0, left out): see the module docstring.

    Args:
        labels: (*S) integer label map, S 2D or 3D.
        affine: its voxel-to-world affine (4x4; 3x3 for 2D), mm.
        names: class index -> structure name.
        image: (*S) intensities on the same grid, as stored in the input (HU for CT); None: no intensity columns.
        uncertainty: (*S) uncertainty map on the same grid; None: no uncertainty column.
        unit: suffix of the intensity columns ('hu' for CT, None for other images).
        case: name used in rows and messages.

    Returns:
        Rows keyed by :func:`statistics_columns`; an absent structure has 0 voxels and empty (None) values.

    Raises:
        ValueError: arrays of different shapes, not 2D/3D, a singular affine or non-integer labels.
    """
    labels = np.asarray(labels)
    dims = labels.ndim
    if dims not in (2, 3):
        raise UserError(f"{case}: label map of shape {labels.shape}; expected 2D or 3D")
    for array, role in ((image, "image"), (uncertainty, "uncertainty")):
        if array is not None and np.shape(array) != labels.shape:
            raise UserError(f"{case}: {role} of shape {np.shape(array)} differs from the label map {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(labels == np.round(labels)):
            raise UserError(f"{case}: label map of type {labels.dtype} holds non-integer values")
        labels = labels.astype(np.int32)
    affine = _full_affine(affine, dims)
    voxel_mm3 = abs(float(np.linalg.det(affine[:3, :3])))
    if not voxel_mm3 > 0:
        raise UserError(f"{case}: the affine is singular (voxel volume {voxel_mm3} mm^3)")
    top = max([int(labels.max()) if labels.size else 0, *names])
    boxes = ndimage.find_objects(labels, max_label=top) if top > 0 else []
    structure = ndimage.generate_binary_structure(dims, dims)  # 26-connected (3D), 8-connected (2D)
    intensity_keys = _intensity_keys(unit)
    rows = []
    for index, name in sorted(names.items()):
        if index == 0:
            continue
        row: dict[str, Any] = {"case": case, "structure": name, "label": index, "voxels": 0, "volume_ml": 0.0,
                               "components": 0, "largest_component_share": None, "bbox_rl_mm": None,
                               "bbox_ap_mm": None, "bbox_si_mm": None, "uncertainty_mean": None}
        row.update({key: None for key in intensity_keys})
        box = boxes[index - 1] if 0 < index <= len(boxes) else None
        if box is not None:
            mask = labels[box] == index
            voxels = int(mask.sum())
            components, count = ndimage.label(mask, structure)
            sizes = np.bincount(components.ravel())[1:]
            row.update(voxels=voxels, volume_ml=voxels * voxel_mm3 / 1000.0, components=int(count),
                       largest_component_share=_round(sizes.max() / voxels, 6))
            row.update(zip(("bbox_rl_mm", "bbox_ap_mm", "bbox_si_mm"),
                           (_round(e, 3) for e in _world_extent(box, affine)), strict=True))
            if image is not None:
                values = np.asarray(image[box], dtype=np.float64)[mask]
                stats = [values.mean(), values.std(), *np.percentile(values, PERCENTILES)]
                row.update(zip(intensity_keys, (_round(v) for v in stats), strict=True))
            if uncertainty is not None:
                row["uncertainty_mean"] = _round(float(np.asarray(uncertainty[box], dtype=np.float64)[mask].mean()), 6)
        row["volume_ml"] = _round(row["volume_ml"], 6)
        rows.append(row)
    return rows


def case_statistics(labels: np.ndarray, affine: np.ndarray, names: dict[int, str], image: np.ndarray | None = None,
                    uncertainty: np.ndarray | None = None, unit: str | None = "hu", case: str = "case",
                    source: str | Path | None = None) -> dict[str, Any]:
    """A case's statistics: its grid, image range, mean uncertainty and one entry per structure.

    Args: as :func:`structure_rows`; ``source`` is the input the statistics describe (for the record).

    Returns:
        {"case", "input", "shape", "spacing_mm", "voxel_volume_ml", "extent_mm", "intensity_unit",
        "image_p0.5", "image_p50", "image_p99.5", "uncertainty_mean", "uncertainty_foreground_mean",
        "structures": [row, ...]} (JSON-ready: NaN as None).
    """
    rows = structure_rows(labels, affine, names, image, uncertainty, unit, case)
    dims = np.asarray(labels).ndim
    full = _full_affine(affine, dims)
    spacing = np.sqrt((full[:3, :dims] ** 2).sum(0))
    record: dict[str, Any] = {
        "case": case, "input": str(source) if source is not None else None,
        "shape": [int(s) for s in np.shape(labels)], "spacing_mm": [_round(s, 6) for s in spacing],
        "voxel_volume_ml": _round(abs(float(np.linalg.det(full[:3, :3]))) / 1000.0, 9),
        "extent_mm": [_round(s * n, 3) for s, n in zip(spacing, np.shape(labels), strict=True)], "intensity_unit": unit,
        "uncertainty_mean": None, "uncertainty_foreground_mean": None,
    }
    if image is not None:
        values = np.percentile(np.asarray(image, dtype=np.float32), IMAGE_PERCENTILES)
        record.update({f"image_p{p:g}": _round(float(v)) for p, v in zip(IMAGE_PERCENTILES, values, strict=True)})
    if uncertainty is not None:
        foreground = np.asarray(labels) > 0
        record["uncertainty_mean"] = _round(float(np.mean(uncertainty)), 6)
        if foreground.any():
            record["uncertainty_foreground_mean"] = _round(float(np.asarray(uncertainty)[foreground].mean()), 6)
    record["structures"] = rows
    return record


def write_case_statistics(record: dict[str, Any], path: str | Path) -> Path:
    """``<case>_statistics.json``, written atomically."""
    return atomic_write_text(Path(path), json.dumps(record, indent=1, allow_nan=False) + "\n")


def read_case_statistics(path: str | Path) -> dict[str, Any]:
    """A record written by :func:`write_case_statistics`.

    Raises:
        ValueError: not such a record (unreadable JSON or no ``structures``).
    """
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not a readable statistics file ({error})") from None
    if not isinstance(record, dict) or not isinstance(record.get("structures"), list):
        raise UserError(f"{path}: not a statistics file (expected a JSON object with 'structures')")
    return record


def write_statistics_csv(records: Iterable[dict[str, Any]], path: str | Path, unit: str | None = "hu",
                         extra: Sequence[str] = ()) -> Path:
    """The tidy batch table: one row per case and structure (``extra`` columns first after ``case``)."""
    columns = statistics_columns(unit)
    columns = (columns[0], *extra, *columns[1:])
    rows = [row for record in records for row in record["structures"]]
    return write_csv(path, rows, columns)
