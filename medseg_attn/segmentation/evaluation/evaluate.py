"""Per-case segmentation metrics (Dice, HD95, surface Dice) of a prediction folder against a label folder.

Metrics come from MONAI (``compute_dice``, ``compute_hausdorff_distance``, ``compute_surface_dice``: the
functions behind ``DiceMetric``, ``HausdorffDistanceMetric`` and ``SurfaceDiceMetric``), with distances in mm
from the NIfTI header's voxel spacing. Each class is evaluated on the bounding box of its prediction and label
voxels (MONAI crops there itself: same numbers), one case at a time, so memory stays at one volume pair plus one
class's crop even for 512x512x300 CT. Empty structures follow fixed conventions (see ``evaluate_case``) where
MONAI 1.6 gives NaN: all three metrics when both are empty, Dice (default ``ignore_empty``) when the label is.
With ``lesions`` (``--lesions``), lesion-wise scores too (:mod:`medseg_attn.segmentation.evaluation.lesion_report`).
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from matplotlib.figure import Figure
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage
from tqdm import tqdm

from medseg_attn.errors import UserError
from medseg_attn.io.files import atomic_write, atomic_write_text, check_output_location
from medseg_attn.io.headers import load_nifti
from medseg_attn.io.manifest import RunManifest
from medseg_attn.io.suffixes import NIFTI_SUFFIXES
from medseg_attn.io.tables import write_csv
from medseg_attn.io.volumes import case_name, grid_mapping, on_grid
from medseg_attn.segmentation.data.sparse import ignore_index
from medseg_attn.segmentation.evaluation.lesion_report import (
    LesionOptions,
    case_lesions,
    check_lesions_found,
    lesion_structures,
    summarize_lesions,
    write_lesion_tables,
)
from medseg_attn.segmentation.measures.overlap import mask_dice
from medseg_attn.segmentation.measures.regions import Regions
from medseg_attn.segmentation.measures.structure_statistics import case_statistics, write_statistics_csv

logger = logging.getLogger(__name__)

__all__ = ["METRICS", "NAN_POLICY", "evaluate_case", "evaluate_folders", "mask_dice"]

METRICS = ("dice", "hd95", "surface_dice")
CSV_COLUMNS = ("case", "class_index", "class_name", *METRICS, "pred_voxels", "label_voxels")
NAN_POLICY = ("hd95 is NaN (undefined) where exactly one of prediction and label is empty for a class; NaN values "
              "are left out of mean/std/median/min/max (nanmean) and counted in nan_count; a statistic without any "
              "finite value is null. Both empty: dice 1, hd95 0, surface_dice 1. One empty: dice 0, surface_dice 0.")


def _present_boxes(array: np.ndarray, source: object) -> dict[int, tuple[slice, ...]]:
    """Bounding box of every nonzero value of an integer label map, in one pass."""
    top = int(array.max()) if array.size else 0
    if top > 65535:  # find_objects lists every value up to the largest
        raise UserError(f"{source}: holds value {top}; expected class indices <= 65535")
    boxes = ndimage.find_objects(array, max_label=top) if top > 0 else []
    return {value: box for value, box in enumerate(boxes, start=1) if box is not None}


def _check_tolerance(tolerance_mm: float) -> None:
    if not (math.isfinite(tolerance_mm) and tolerance_mm > 0):
        raise UserError(f"surface Dice tolerance {tolerance_mm} mm must be a positive number")


def _class_metrics(pred: np.ndarray, label: np.ndarray, spacing: list[float], tolerance_mm: float) -> dict:
    """Metrics of one class from two boolean masks (a crop holding all of the class's voxels)."""
    counts = {"pred_voxels": int(pred.sum()), "label_voxels": int(label.sum())}
    if not any(counts.values()):
        return {"dice": 1.0, "hd95": 0.0, "surface_dice": 1.0, **counts}
    if not all(counts.values()):
        return {"dice": 0.0, "hd95": math.nan, "surface_dice": 0.0, **counts}
    y_pred, y = (torch.from_numpy(np.ascontiguousarray(mask))[None, None] for mask in (pred, label))  # (1, 1, *S)
    with warnings.catch_warnings():  # MONAI >= 1.5 warns about its own deprecated get_mask_edges argument
        warnings.simplefilter("ignore", FutureWarning)
        dice = compute_dice(y_pred, y, include_background=True, ignore_empty=False)
        hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing)
        surface = compute_surface_dice(y_pred, y, [tolerance_mm], include_background=True, spacing=spacing)
    return {"dice": float(dice), "hd95": float(hd95), "surface_dice": float(surface), **counts}


def evaluate_case(
    pred: np.ndarray, label: np.ndarray, spacing: Sequence[float], classes: Sequence[int], tolerance_mm: float = 1.0,
    *, case: str = "case", ignore: int | None = None,
) -> dict[int, dict[str, float]]:
    """Dice, HD95 (mm) and surface Dice of each class for one prediction/label pair.

    Empty structures: both empty -> dice 1, hd95 0, surface_dice 1; exactly one empty -> dice 0, hd95 NaN,
    surface_dice 0. Values not in ``classes`` count as background (with a warning for the prediction's);
    class 0, when listed, is everything not in ``classes``.

    Args:
        pred, label: (*S) integer label maps on the same grid, S 2D or 3D.
        spacing: voxel size in mm per spatial axis.
        classes: class indices to evaluate.
        tolerance_mm: surface Dice tolerance in mm.
        case: name used in messages.
        ignore: sparse labels' ``ignore`` value (:mod:`medseg_attn.segmentation.data.sparse`): the voxels the label
            marks with it count in no metric of any class (as in training's validation).

    Returns:
        class index -> {"dice", "hd95", "surface_dice", "pred_voxels", "label_voxels"}.

    Raises:
        ValueError: shapes differ, not 2D/3D, spacing of the wrong length, non-integer or negative values.
    """
    pred, label = (a.astype(np.uint8) if a.dtype == bool else a for a in (np.asarray(pred), np.asarray(label)))
    if pred.shape != label.shape or pred.ndim not in (2, 3) or len(spacing) != pred.ndim:
        raise UserError(f"{case}: prediction {pred.shape}, label {label.shape}, spacing {tuple(spacing)}; "
                         "expected one 2D or 3D shape and one spacing per axis")
    _check_tolerance(tolerance_mm)
    for array, role in ((pred, "prediction"), (label, "label")):
        if not np.issubdtype(array.dtype, np.integer) or (array.size and array.min() < 0):
            raise UserError(f"{case}: {role} ({array.dtype}) must hold integer class indices >= 0")
    annotated = None
    if ignore is not None and (label == ignore).any():  # unannotated voxels count nowhere
        annotated = label != ignore
        pred, label = np.where(annotated, pred, 0), np.where(annotated, label, 0)
    classes = list(dict.fromkeys(int(c) for c in classes if c != ignore))
    spacing, foreground = [float(s) for s in spacing], [c for c in classes if c != 0]
    pred_boxes, label_boxes = _present_boxes(pred, case), _present_boxes(label, case)
    ignored = sorted(set(pred_boxes) - set(foreground))
    if ignored:
        logger.warning("%s: prediction values %s are not evaluated classes; they count as background", case, ignored)
    results: dict[int, dict[str, float]] = {}
    for index in classes:
        boxes = [found[index] for found in (pred_boxes, label_boxes) if index in found]
        if index == 0:
            pred_mask, label_mask = ~np.isin(pred, foreground), ~np.isin(label, foreground)
            if annotated is not None:
                pred_mask, label_mask = pred_mask & annotated, label_mask & annotated
        elif not boxes:
            pred_mask = label_mask = np.zeros((0,) * pred.ndim, dtype=bool)
        else:  # the union of the two bounding boxes holds every voxel of the class
            region = tuple(slice(min(b.start for b in axis), max(b.stop for b in axis))
                           for axis in zip(*boxes, strict=True))
            pred_mask, label_mask = pred[region] == index, label[region] == index
        results[index] = _class_metrics(pred_mask, label_mask, spacing, tolerance_mm)
    return results


def _nifti_files(folder: Path, role: str) -> dict[str, Path]:
    """Case name -> NIfTI file of a folder (one file per case)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: {role} folder not found")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(NIFTI_SUFFIXES):
            name = case_name(path)
            if name in files:
                raise UserError(f"{folder}: case {name!r} is there twice ({files[name].name}, {path.name})")
            files[name] = path
    return files


def _open(path: Path) -> tuple[nib.Nifti1Image, tuple[int, ...]]:
    """The NIfTI image (header only) and its spatial shape, a 4th axis of length 1 dropped."""
    try:
        image = load_nifti(path)
    except Exception as error:  # nibabel raises many kinds for broken files
        raise UserError(f"{path}: not a readable NIfTI file ({type(error).__name__}: {error})") from None
    shape = tuple(int(s) for s in image.shape)
    shape = shape[:3] if len(shape) == 4 and shape[3] == 1 else shape
    if len(shape) not in (2, 3):
        raise UserError(f"{path}: shape {shape}; expected a 2D or 3D label map (or 4D with a 4th axis of 1)")
    return image, shape


def _check_geometry(pred_path: Path, label_path: Path) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The prediction must lie on its label's voxel grid (headers only, no voxel data read).

    Returns None when shape and affine are equal, or the axis mapping (:func:`grid_mapping`) when the prediction
    is the same grid stored with axes flipped or permuted (e.g. LPS prediction of a DICOM series, LAS reference).
    """
    (pred, pred_shape), (label, label_shape) = _open(pred_path), _open(label_path)
    if pred_shape == label_shape and np.allclose(pred.affine, label.affine, atol=1e-3):
        return None
    mapping = grid_mapping(pred_shape, pred.affine, label_shape, label.affine)
    if mapping is not None and len(pred_shape) == 3:
        logger.info("%s: the same voxel grid as %s with axes flipped/permuted; compared voxel by voxel",
                    pred_path, label_path)
        return mapping
    if pred_shape != label_shape:
        raise UserError(f"{pred_path}: shape {pred_shape} does not match label {label_path} shape {label_shape}")
    difference = float(np.abs(pred.affine - label.affine).max())
    raise UserError(f"{pred_path}: affine does not match label {label_path} (largest difference "
                     f"{difference:.4g}, tolerance 1e-3); expected the prediction on the label's voxel grid")


def _read_label_map(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Integer label map (singleton spatial axes dropped, so 64x64x1 is 2D) and its spacing in mm."""
    image, shape = _open(path)
    spacing = image.header.get_zooms()[: len(shape)]
    keep = [axis for axis, size in enumerate(shape) if size > 1]
    if len(keep) < 2:
        raise UserError(f"{path}: shape {shape} has fewer than 2 axes longer than 1; expected a 2D or 3D map")
    data = np.asanyarray(image.dataobj).reshape([shape[axis] for axis in keep])
    if not np.issubdtype(data.dtype, np.integer):  # NIfTI has no bool type
        bad = ~np.isfinite(data) | (data != np.round(data))
        if bad.any():
            raise UserError(f"{path}: holds non-integer value {data[bad][0]}; expected integer class indices")
        data = data.astype(np.int32)
    if data.size and data.min() < 0:
        raise UserError(f"{path}: holds negative value {data.min()}; expected class indices >= 0")
    return data, tuple(float(spacing[axis]) for axis in keep)


def _class_names(labels: dict[int, str] | None, label_paths: list[Path], include_background: bool) -> dict[int, str]:
    """Class index -> name of the evaluated classes, sorted by index.

    A value of the label files that ``labels`` does not name is evaluated as its own class ``label_<k>``, with a
    warning naming the files (never silently counted as background).
    """
    present = {path: set(_present_boxes(_read_label_map(path)[0], path)) for path in label_paths}  # one at a time
    names = {index: f"label_{index}" for index in set().union(*present.values())}
    if labels is not None:
        given = {int(index): str(name) for index, name in labels.items()}
        if min(given, default=0) < 0:
            raise UserError(f"class indices {sorted(given)} must be >= 0")
        unnamed = sorted(set(names) - set(given) - {0})
        if unnamed:
            files = [path.name for path, values in present.items() if values & set(unnamed)]
            logger.warning("label values %s are not in the class names given (%s) but occur in %d label file(s) "
                           "(%s); each is evaluated as its own class label_<value>", unnamed,
                           ", ".join(f"{k}={v}" for k, v in sorted(given.items())), len(files), ", ".join(files[:5]))
        names = {**{index: names[index] for index in unnamed}, **given}
    background = names.pop(0, "background")
    if include_background:
        names[0] = background
    if not names:
        raise UserError(f"no classes to evaluate: the label files in {label_paths[0].parent} hold only background")
    if len(set(names.values())) < len(names):
        raise UserError(f"class names {sorted(names.values())} are not unique; summary.json is keyed by name")
    return dict(sorted(names.items()))


def _statistics(values: list[float]) -> dict[str, float | int | None]:
    """mean, std (population), median, min, max of the non-NaN values (None if there are none), nan_count."""
    array = np.asarray(values, dtype=np.float64)
    finite = array[~np.isnan(array)]
    reducers = {"mean": np.mean, "std": np.std, "median": np.median, "min": np.min, "max": np.max}
    stats = {key: float(reduce(finite)) if finite.size else None for key, reduce in reducers.items()}
    return stats | {"nan_count": int(array.size - finite.size)}


def _summarize(rows: list[dict], names: dict[int, str], cases: int, tolerance_mm: float) -> dict:
    classes = {name: {metric: _statistics([r[metric] for r in rows if r["class_index"] == index])
                      for metric in METRICS} for index, name in names.items()}
    means = [stats["dice"]["mean"] for stats in classes.values() if stats["dice"]["mean"] is not None]
    return {"classes": classes, "class_indices": {name: index for index, name in names.items()},
            "mean_dice": float(np.mean(means)) if means else None, "cases": cases,
            "tolerance_mm": float(tolerance_mm), "nan_policy": NAN_POLICY}


def _label_statistics(name: str, pred: np.ndarray, label: np.ndarray, label_path: Path, spacing: Sequence[float],
                      names: dict[int, str]) -> list[dict]:
    """Statistics records of the reference and the prediction (on the reference's grid), rows tagged by source."""
    affine = np.asarray(_open(label_path)[0].affine, dtype=np.float64)
    if label.ndim == 2:  # a single-slice map: its in-plane spacing, voxels of the slice thickness
        affine = np.diag([*spacing, float(np.prod(load_nifti(label_path, warn=False).header.get_zooms()[:3])
                                          / np.prod(spacing)), 1.0])
    records = []
    for source, array in (("reference", label), ("prediction", pred)):
        record = case_statistics(array, affine, {i: n for i, n in names.items() if i}, unit=None, case=name)
        for row in record["structures"]:
            row["source"] = source
        records.append(record)
    return records


REGION_COLUMNS = ("case", "region", "values", "dice", "pred_voxels", "label_voxels")


def _region_rows(case: str, pred: np.ndarray, label: np.ndarray, regions: Regions, ignore: int | None) -> list[dict]:
    """regions.csv rows of one case: each region's Dice with its values merged in both maps (ignore voxels out)."""
    annotated = label != ignore if ignore is not None else None
    rows = []
    for region, values, found, truth in zip(regions.names, regions.values, regions.masks(pred), regions.masks(label),
                                            strict=True):
        if annotated is not None:
            found, truth = found & annotated, truth & annotated
        rows.append({"case": case, "region": region, "values": " ".join(map(str, values)),
                     "dice": mask_dice(found, truth), "pred_voxels": int(found.sum()),
                     "label_voxels": int(truth.sum())})
    return rows


def _write_csv(rows: list[dict], path: Path) -> None:
    write_csv(path, rows, CSV_COLUMNS, float_format=".6f")


def _plot(rows: list[dict], names: dict[int, str], path: Path, cases: int, lesion_rows: list[dict] | None = None,
          ) -> None:
    """Box plots of per-class Dice and HD95 (NaN left out), with ``lesion_rows`` a third panel of the per-case
    lesion-wise Dice per structure; drawn on the Agg canvas (no pyplot state)."""
    positions = list(range(1, len(names) + 1))
    panels = 2 if lesion_rows is None else 3
    figure = Figure(figsize=(max(6.0, 0.4 * len(names) + 2.0), 4.0 * panels), layout="constrained")
    dice_axes, hd_axes, *lesion_axes = figure.subplots(panels, 1)
    for axes, metric, title, unit in ((dice_axes, "dice", "Dice", ""), (hd_axes, "hd95", "HD95", " (mm)")):
        data = [[r[metric] for r in rows if r["class_index"] == i and not math.isnan(r[metric])] for i in names]
        axes.boxplot(data, positions=positions)
        axes.set_xticks(positions, list(names.values()), rotation=45, ha="right")
        axes.set(title=f"{title} per class ({cases} cases)", xlabel="class", ylabel=f"{title}{unit}")
    dice_axes.set_ylim(-0.02, 1.02)
    if lesion_rows is not None:
        structures = list(dict.fromkeys(row["structure"] for row in lesion_rows))
        where = list(range(1, len(structures) + 1))
        lesion_axes[0].boxplot([[r["lesionwise_dice"] for r in lesion_rows if r["structure"] == s]
                                for s in structures], positions=where)
        lesion_axes[0].set_xticks(where, structures, rotation=45, ha="right")
        lesion_axes[0].set(title=f"lesion-wise Dice (BraTS 2023) per structure ({cases} cases)", xlabel="structure",
                           ylabel="lesion-wise Dice", ylim=(-0.02, 1.02))
    figure.suptitle("Segmentation metrics per class")
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))


def evaluate_folders(
    pred_dir: str | Path, label_dir: str | Path, output_dir: str | Path, labels: dict[int, str] | None = None,
    tolerance_mm: float = 1.0, include_background: bool = False, progress: bool = True, statistics: bool = False,
    lesions: LesionOptions | None = None, regions: Regions | None = None,
) -> dict:
    """Evaluate every label file against the prediction of the same name; write CSV, JSON and a box plot.

    Cases match by file name without extension (``case_1.nii`` matches ``case_1.nii.gz``); predictions without
    a label are ignored with a warning. All headers are checked before any metric is computed, then cases are
    read one at a time. Empty structures follow the module docstring's conventions.

    Args:
        pred_dir: folder of predicted label maps (NIfTI).
        label_dir: folder of reference label maps (NIfTI); each needs a prediction.
        output_dir: receives ``metrics.csv``, ``summary.json`` and ``dice_boxplot.png`` (created).
        labels: class index -> name; None: every nonzero value of the label files, named ``label_<k>``; values
            of the label files missing from ``labels`` are evaluated as ``label_<k>`` too, with a warning; a
            label named ``ignore`` (sparse labels) is no class: the voxels it marks count in no metric.
        tolerance_mm: surface Dice tolerance in mm.
        include_background: also evaluate class 0 (everything not in another evaluated class).
        progress: show a progress bar over cases on stderr.
        statistics: also write ``statistics.csv``: per case, structure and ``source`` (reference, prediction) the
            label-map statistics of :mod:`medseg_attn.segmentation.measures.structure_statistics` on the
            reference's grid (no image here, so no intensity values), so predicted and reference volumes sit side
            by side.
        lesions: also score lesions (connected components; :mod:`medseg_attn.segmentation.evaluation.lesion_report`):
            ``lesions.csv``, ``lesion_pairs.csv``, a ``lesions`` entry in the summary and a lesion-wise Dice panel in
            the box plot. A named structure without a lesion in any case is a UserError, raised before any file is
            written.
        regions: a region dataset's regions (nnU-Net v2; :mod:`medseg_attn.segmentation.measures.regions`): also
            the Dice of every region (its label values merged, in both maps) per case, ``regions.csv``, and a
            ``regions`` entry in the summary.

    Returns:
        The summary written to ``summary.json`` (NaN as None).

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: no label files, missing predictions, shape/affine mismatch, non-integer values.
    """
    pred_dir, label_dir, output_dir = Path(pred_dir), Path(label_dir), Path(output_dir)
    _check_tolerance(tolerance_mm)
    label_files, pred_files = _nifti_files(label_dir, "label"), _nifti_files(pred_dir, "prediction")
    check_output_location(output_dir, [pred_dir, label_dir], folder=True)
    manifest = RunManifest(output_dir, "evaluate")
    if not label_files:
        raise UserError(f"{label_dir}: no NIfTI label files (.nii or .nii.gz) found")
    missing = [path.name for name, path in label_files.items() if name not in pred_files]
    if missing:
        raise UserError(f"{pred_dir}: no prediction for {len(missing)} label file(s) of {label_dir}: "
                         f"{', '.join(missing)}")
    extra = sorted(set(pred_files) - set(label_files))
    if extra:
        logger.warning("%s: %d prediction(s) without a label ignored: %s", pred_dir, len(extra), ", ".join(extra))
    cases = [(name, pred_files[name], path) for name, path in label_files.items()]
    mappings = {name: _check_geometry(pred_path, label_path) for name, pred_path, label_path in cases}
    names = _class_names(labels, list(label_files.values()), include_background)
    ignore = ignore_index(labels) if labels else None  # sparse labels: unannotated voxels, never a class
    if names.pop(ignore, None) is not None:
        logger.info("label %d (ignore) marks unannotated voxels: they count in no metric", ignore)
    logger.info("evaluating %d cases, classes %s", len(cases), names)
    structures = lesion_structures(lesions, names) if lesions is not None else {}
    rows: list[dict] = []
    measured: list[dict] = []
    lesion_rows: list[dict] = []
    lesion_pairs: list[dict] = []
    region_rows: list[dict] = []
    for name, pred_path, label_path in tqdm(cases, desc="evaluate", unit="case", disable=not progress):
        (pred, _), (label, spacing) = _read_label_map(pred_path), _read_label_map(label_path)
        if mappings[name] is not None:
            if pred.ndim != len(mappings[name][0]):
                raise UserError(f"{pred_path}: a single-slice map stored with other axes than {label_path}; "
                                 "write the prediction on the label's grid")
            pred = np.ascontiguousarray(on_grid(pred, mappings[name]))
        metrics = evaluate_case(pred, label, spacing, list(names), tolerance_mm, case=pred_path.name, ignore=ignore)
        if statistics:
            measured += _label_statistics(name, pred, label, label_path, spacing, names)
        if lesions is not None:
            found, found_pairs = case_lesions(name, pred, label, spacing, structures, lesions.rules, ignore)
            lesion_rows += found
            lesion_pairs += found_pairs
        if regions is not None:
            region_rows += _region_rows(name, pred, label, regions, ignore)
        del pred, label  # one case in memory at a time
        rows += [{"case": name, "class_index": i, "class_name": names[i], **metrics[i]} for i in names]
    absent = [names[i] for i in names if not any(r["label_voxels"] for r in rows if r["class_index"] == i)]
    if absent:
        logger.warning("classes %s appear in no label file of %s", absent, label_dir)
    summary = _summarize(rows, names, len(cases), tolerance_mm) | {"ignore_label": ignore}
    if lesions is not None:
        check_lesions_found(lesion_rows, structures, named=bool(lesions.structures))
        summary["lesions"] = summarize_lesions(lesion_rows, lesion_pairs, structures, lesions.rules)
    output_dir.mkdir(parents=True, exist_ok=True)
    if lesions is not None:
        write_lesion_tables(lesion_rows, lesion_pairs, output_dir)
    if regions is not None:
        summary["regions"] = {region: {"dice": _statistics([r["dice"] for r in region_rows if r["region"] == region])}
                              for region in regions.names}
        write_csv(output_dir / "regions.csv", region_rows, REGION_COLUMNS, float_format=".6f")
    _write_csv(rows, output_dir / "metrics.csv")
    if statistics:
        write_statistics_csv(measured, output_dir / "statistics.csv", unit=None, extra=("source",))
    atomic_write_text(output_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    _plot(rows, names, output_dir / "dice_boxplot.png", len(cases), lesion_rows if lesions is not None else None)
    for name, pred_path, label_path in cases:
        manifest.add_input(pred_path, name=f"{name} (prediction)", geometry=True)
        manifest.add_input(label_path, name=f"{name} (reference)", geometry=True)
    manifest.update(tolerance_mm=tolerance_mm, results={"mean_dice": summary.get("mean_dice")},
                    **({"lesion_rules": lesions.rules.describe()} if lesions is not None else {}))
    manifest.finish("ok")
    logger.info("mean Dice %s over %d cases; results in %s", summary["mean_dice"], len(cases), output_dir)
    return summary
