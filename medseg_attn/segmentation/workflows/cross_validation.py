"""``medseg-attn cv RUN``: every case predicted by the fold that did not see it, scored per fold and pooled.

Writes into ``RUN/cv/``: ``predictions/`` (out-of-fold label maps), ``references/`` (the reference label maps,
ignore voxels set to background and blanked in the prediction too, so they count nowhere), ``evaluation/``
(:func:`medseg_attn.segmentation.evaluation.evaluate.evaluate_folders`: per case and class Dice, HD95, surface
Dice, box plot), ``cv_metrics.csv`` (per fold and pooled means per class), ``cv_dice.png`` and ``summary.json``
with the summary line (per class: mean ± sd over folds of the fold means). Then it chooses the postprocessing
(:func:`choose_postprocessing`: per class the largest component, or a minimum component size, or nothing) and
writes ``RUN/postprocessing.json``, which ``predict --model RUN`` applies.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medseg_attn.errors import UserError
from medseg_attn.io.files import atomic_write, atomic_write_text
from medseg_attn.io.formats import NIFTI, format_of
from medseg_attn.io.manifest import recorded_run
from medseg_attn.io.nifti import write_nifti
from medseg_attn.io.tables import write_csv
from medseg_attn.io.volumes import grid_mapping, on_grid
from medseg_attn.model_layout import find_checkpoint, fold_dir, fold_states, is_cv_run, read_cv_record
from medseg_attn.segmentation.data.datasets import load_dataset
from medseg_attn.segmentation.data.sparse import ignore_index
from medseg_attn.segmentation.evaluation.evaluate import _check_tolerance, evaluate_folders
from medseg_attn.segmentation.evaluation.lesion_report import LesionOptions, lesion_structures
from medseg_attn.segmentation.inference.predictor import Predictor
from medseg_attn.segmentation.measures.lesions import label_lesions, lesion_scores
from medseg_attn.segmentation.measures.overlap import mask_dice
from medseg_attn.segmentation.measures.postprocessing import (
    ClassPostprocessing,
    apply_postprocessing,
    components,
    voxel_ml,
)
from medseg_attn.segmentation.measures.regions import Regions

logger = logging.getLogger(__name__)

__all__ = ["choose_postprocessing", "cross_validate", "describe_choice"]


def cross_validate(run: str | Path, device: str = "auto", progress: bool = True, tolerance_mm: float = 1.0,
                   lesions: LesionOptions | None = None) -> dict[str, Any]:
    """Out-of-fold prediction and evaluation of a CV run; returns (and writes) ``RUN/cv/summary.json``.

    With ``lesions`` (lesion datasets) the evaluation also scores lesions (``RUN/cv/evaluation/lesions.csv`` and
    ``lesion_pairs.csv``, :mod:`medseg_attn.segmentation.evaluation.lesion_report`) and the summary gains the
    pooled lesion counts, lesion F1 and lesion-wise Dice / HD95 per structure; the structures named are checked
    against the dataset's labels before any case is predicted.

    Everything is checked before the first case is predicted (the tolerance, every fold finished, every recorded
    case in the dataset with a NIfTI reference): a refusal leaves ``RUN/cv/`` as it was.

    Raises:
        ValueError: not a CV run, a bad tolerance, a fold not finished, or a recorded case missing from the dataset.
    """
    run = Path(run)
    if not is_cv_run(run):
        raise UserError(f"{run}: not a cross-validation run folder (no cv.json); train one with "
                        f"medseg-attn train --data D --folds 5 --output {run}")
    _check_tolerance(tolerance_mm)  # every argument and fold checked before any case is predicted
    record = read_cv_record(run)
    splits = json.loads((run / "splits.json").read_text())["splits"]
    _check_folds_finished(run)
    dataset = load_dataset(record["dataset"])
    by_name = {case["case"]: case for case in dataset.training}
    for name in (name for split in splits for name in split["validation"]):
        if name not in by_name:
            raise UserError(f"{run / 'splits.json'}: case {name} is no longer in {record['dataset']}")
        if format_of(Path(by_name[name]["label"])) is not NIFTI:
            raise UserError(f"{by_name[name]['label']}: medseg-attn cv reads NIfTI reference labels only")
    ignore = ignore_index(dataset.labels)
    if lesions is not None:
        lesion_structures(lesions, {int(i): n for i, n in dataset.labels.items() if int(i) != ignore})
    out = run / "cv"
    with recorded_run(out, "cv") as manifest:  # RUN/cv/run.json
        manifest.add_input(record["dataset"], name="dataset", checksum=Path(record["dataset"]).is_file())
        manifest.add_model([find_checkpoint(fold_dir(run, int(split["fold"]))) for split in splits], device=device)
        manifest.update(options={"tolerance_mm": tolerance_mm,
                                 "lesions": None if lesions is None else lesions.rules.describe()})
        summary = _out_of_fold(run, out, splits, by_name, ignore, device, progress, tolerance_mm, lesions,
                               dataset.lesion_structures, dataset.regions)
    logger.info("%s", summary["line"])
    return summary


def _check_folds_finished(run: Path) -> None:
    """Every fold trained to its end (``finished.json``), or one line naming the ones that are not."""
    states = fold_states(run)
    missing = [f"fold {k} has no checkpoint yet" for k, state in states.items() if state == "missing"]
    started = [f"fold {k} has not finished training" for k, state in states.items() if state == "started"]
    if missing or started:
        raise UserError(f"{run}: {'; '.join(missing + started)}; finish them with medseg-attn train --output {run} "
                        f"--resume, then run medseg-attn cv {run}")


def _out_of_fold(run: Path, out: Path, splits: list[dict[str, Any]], by_name: dict[str, dict[str, Any]],
                 ignore: int | None, device: str, progress: bool, tolerance_mm: float,
                 lesions: LesionOptions | None = None, lesion_names: tuple[str, ...] = (),
                 regions: Regions | None = None) -> dict[str, Any]:
    """Every case predicted by the fold that did not see it, scored; ``RUN/cv/summary.json`` and the
    postprocessing chosen (``lesion_names`` and the structures ``lesions`` names: chosen on lesion scores)."""
    predictions, references = out / "predictions", out / "references"
    fold_of: dict[str, int] = {}
    labels: dict[int, str] = {}
    for split in splits:
        fold = int(split["fold"])
        predictor = Predictor.from_checkpoint(fold_dir(run, fold), device=device)
        labels = predictor.labels
        for name in split["validation"]:
            fold_of[name] = fold
            prediction = predictor.predict(by_name[name]["image"])
            reference_path = Path(by_name[name]["label"])
            reference = nib.load(str(reference_path))
            ref = np.asarray(reference.dataobj).astype(np.int16)
            pred = prediction.labels.astype(np.uint8)
            if pred.shape != ref.shape or not np.allclose(prediction.affine, reference.affine, atol=1e-3):
                mapping = grid_mapping(pred.shape, prediction.affine, ref.shape, reference.affine)
                if mapping is None:
                    raise UserError(f"{reference_path}: not on the voxel grid of its image {by_name[name]['image']}")
                pred = np.ascontiguousarray(on_grid(pred, mapping))  # the prediction on the reference's grid
            if ignore is not None:  # unannotated voxels count nowhere
                mask = ref == ignore
                pred[mask], ref[mask] = 0, 0
            write_nifti(pred, predictions / f"{name}.nii.gz", reference=reference_path)
            write_nifti(ref, references / f"{name}.nii.gz", reference=reference_path)
    pooled = evaluate_folders(predictions, references, out / "evaluation", labels=labels, tolerance_mm=tolerance_mm,
                              progress=progress, lesions=lesions, regions=regions)
    summary = _summarise(out, fold_of, len(splits), pooled)
    if "regions" in pooled:  # a region dataset: each region's out-of-fold Dice
        summary["regions"] = {name: values["dice"]["mean"] for name, values in pooled["regions"].items()}
    if "lesions" in pooled:
        summary["lesions"] = {name: {key: values[key] for key in ("true_positives", "false_positives",
                                                                  "false_negatives", "lesion_f1")}
                              | {"lesionwise_dice": values["lesionwise_dice"]["mean"],
                                 "lesionwise_hd95": values["lesionwise_hd95"]["mean"]}
                              for name, values in pooled["lesions"]["structures"].items()}
    named = {n.lower() for n in (*lesion_names, *(lesions.structures if lesions else ()))}
    lesion_classes = {index for index, name in labels.items() if index and {name.lower(), str(index)} & named}
    summary["postprocessing"] = choose_postprocessing(run, labels, lesion_classes)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary


def _summarise(out: Path, fold_of: dict[str, int], folds: int, pooled: dict[str, Any]) -> dict[str, Any]:
    with (out / "evaluation" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    names = list(dict.fromkeys(row["class_name"] for row in rows))
    table, fold_means = [], {name: [] for name in names}
    for group in [*range(folds), "pooled"]:
        for name in names:
            chosen = [r for r in rows if r["class_name"] == name and (group == "pooled" or fold_of[r["case"]] == group)]
            values = {key: [float(r[key]) for r in chosen if r[key] not in ("", "nan", "None")]
                      for key in ("dice", "hd95", "surface_dice")}
            means = {key: round(float(np.mean(v)), 4) if v else None for key, v in values.items()}
            table.append({"fold": group, "class": name, "cases": len(chosen), **means})
            if group != "pooled" and means["dice"] is not None:
                fold_means[name].append(means["dice"])
    write_csv(out / "cv_metrics.csv", table, ["fold", "class", "cases", "dice", "hd95", "surface_dice"])
    _plot(table, names, folds, out / "cv_dice.png")
    parts = [f"{name} {np.mean(v):.4f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.4f}"
             for name, v in fold_means.items() if v]
    line = f"{folds}-fold CV Dice (mean ± sd over folds): " + "; ".join(parts) + f"; pooled mean {pooled['mean_dice']}"
    return {"folds": folds, "cases": len(fold_of), "line": line, "per_fold": table,
            "dice_by_fold": {name: v for name, v in fold_means.items()}}


def _plot(table: list[dict], names: list[str], folds: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(1.2 + 1.6 * len(names), 3.5))
    width = 0.8 / (folds + 1)
    for offset, group in enumerate([*range(folds), "pooled"]):
        values = [next((r["dice"] or 0.0) for r in table if r["fold"] == group and r["class"] == name)
                  for name in names]
        axis.bar(np.arange(len(names)) + offset * width, values, width, label=f"fold {group}" if group != "pooled"
                 else "pooled", color="black" if group == "pooled" else None)
    axis.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
    axis.set_ylim(0, 1)
    axis.set_ylabel("mean Dice")
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)


SIZE_FRACTIONS = (0.01, 0.05, 0.1, 0.25)  # candidate minimum sizes, as fractions of the median reference volume
LESION_SIZE_FRACTIONS = (0.05, 0.1, 0.25, 0.5)  # lesion classes: fractions of the median reference lesion volume


def choose_postprocessing(run: str | Path, labels: dict[int, str], lesion_classes: set[int] | None = None
                          ) -> dict[str, Any]:
    """Per class, the postprocessing that raises the mean out-of-fold Dice of the class most, if any does (nnU-Net's
    rule, with its v1 size filter): keep only the largest connected component, or remove the components below a
    size (candidates: :data:`SIZE_FRACTIONS` of the median volume of the class in the references, in ml). Ties go
    to the earlier candidate (nothing, then the largest component, then the smallest size).

    A lesion class (``lesion_classes``) is judged lesion by lesion instead: the candidates are nothing and minimum
    lesion volumes (:data:`LESION_SIZE_FRACTIONS` of the median reference lesion's volume; never the largest
    component, which would keep one lesion), and the one kept raises the pooled out-of-fold lesion F1 most without
    lowering the mean lesion-wise Dice (:func:`~medseg_attn.segmentation.measures.lesions.lesion_scores`).

    Writes ``RUN/postprocessing.json`` and returns it."""
    run = Path(run)
    out = run / "cv"
    classes = [index for index in sorted(labels) if index > 0]
    cases = []  # (reference, prediction, ml per voxel)
    spacings = []  # mm per axis of each reference
    for path in sorted((out / "references").glob("*.nii.gz")):
        image = nib.load(str(path))
        spacings.append([float(z) for z in image.header.get_zooms()[:image.ndim]])
        cases.append((np.asarray(image.dataobj), np.asarray(nib.load(str(out / "predictions" / path.name)).dataobj),
                      voxel_ml(image.affine)))
    choice = {}
    for index in classes:
        if index in (lesion_classes or set()):
            choice[str(index)] = _choose_for_lesions(cases, spacings, index, labels[index])
            continue
        volumes = [float(count) * ml for ref, _, ml in cases if (count := np.count_nonzero(ref == index))]
        sizes = sorted({round(f * float(np.median(volumes)), 4) for f in SIZE_FRACTIONS} - {0.0}) if volumes else []
        rules = [ClassPostprocessing(), ClassPostprocessing(largest_component=True),
                 *(ClassPostprocessing(min_size_ml=size) for size in sizes)]
        found = [{index: components(pred, index)} for _, pred, _ in cases]  # labelled once, judged per rule
        means = [float(np.mean([mask_dice(apply_postprocessing(pred, {index: rule}, ml, labelled) == index,
                                          ref == index)
                               for (ref, pred, ml), labelled in zip(cases, found, strict=True)]))
                 if cases else 0.0 for rule in rules]
        best = 0
        for position, mean in enumerate(means):
            if mean > means[best] + 1e-6:
                best = position
        rule = rules[best]
        choice[str(index)] = {"name": labels[index], "largest_component": rule.largest_component,
                              "min_size_ml": rule.min_size_ml, "dice_before": round(means[0], 5),
                              "dice_after": round(means[best], 5),
                              "candidates": {rule.describe(): round(mean, 5)
                                             for rule, mean in zip(rules, means, strict=True)}}
    record = {"rule": "per class, the largest connected component kept or components below a size removed, where "
                      "it raises the mean out-of-fold Dice most", "cases": len(cases), "classes": choice}
    atomic_write_text(run / "postprocessing.json", json.dumps(record, indent=2) + "\n")
    for entry in choice.values():
        if entry.get("judged_by") == "lesions":
            logger.info("postprocessing %s: %s (out-of-fold lesion F1 %.4f -> %.4f, lesion-wise Dice %.4f -> %.4f)",
                        entry["name"], describe_choice(entry), entry["lesion_f1_before"], entry["lesion_f1_after"],
                        entry["lesionwise_dice_before"], entry["lesionwise_dice_after"])
        else:
            logger.info("postprocessing %s: %s (out-of-fold Dice %.4f -> %.4f)", entry["name"],
                        describe_choice(entry), entry["dice_before"], entry["dice_after"])
    return record


def _choose_for_lesions(cases: list[tuple[np.ndarray, np.ndarray, float]], spacings: list[list[float]], index: int,
                        name: str) -> dict[str, Any]:
    """:func:`choose_postprocessing` for one lesion class: the minimum lesion volume that raises the pooled lesion
    F1 most without lowering the mean lesion-wise Dice (nothing when none does)."""
    volumes = []
    for (ref, _, ml) in cases:
        ids, count = label_lesions(ref == index, what=name)
        volumes += (np.bincount(ids.ravel())[1:] * ml).tolist() if count else []
    sizes = sorted({round(f * float(np.median(volumes)), 5) for f in LESION_SIZE_FRACTIONS} - {0.0}) if volumes else []
    rules = [ClassPostprocessing(), *(ClassPostprocessing(min_size_ml=size) for size in sizes)]
    scores = []  # (pooled lesion F1, mean lesion-wise Dice) per rule
    for rule in rules:
        tp = fp = fn = 0
        dice = []
        for (ref, pred, ml), spacing in zip(cases, spacings, strict=True):
            kept = apply_postprocessing(pred, {index: rule}, ml) == index
            counts = lesion_scores(kept, ref == index, spacing, case=name).counts
            tp, fp, fn = tp + counts["true_positives"], fp + counts["false_positives"], fn + counts["false_negatives"]
            dice.append(counts["lesionwise_dice"])
        scores.append((2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0, float(np.mean(dice)) if dice else 1.0))
    best = 0
    for position, (f1, dice) in enumerate(scores):
        if f1 > scores[best][0] + 1e-6 and dice >= scores[0][1] - 1e-6:
            best = position
    rule = rules[best]
    return {"name": name, "largest_component": False, "min_size_ml": rule.min_size_ml, "judged_by": "lesions",
            "lesion_f1_before": round(scores[0][0], 5), "lesion_f1_after": round(scores[best][0], 5),
            "lesionwise_dice_before": round(scores[0][1], 5), "lesionwise_dice_after": round(scores[best][1], 5),
            "candidates": {rule.describe(): {"lesion_f1": round(f1, 5), "lesionwise_dice": round(dice, 5)}
                           for rule, (f1, dice) in zip(rules, scores, strict=True)}}


def describe_choice(entry: dict[str, Any]) -> str:
    """One class's entry of ``postprocessing.json`` in words."""
    return ClassPostprocessing.from_entry(entry).describe()
