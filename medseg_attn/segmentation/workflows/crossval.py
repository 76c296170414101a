"""k-fold cross-validation as one run: every fold trained into ``RUN/fold_<k>``, then evaluated out of fold.

The folds are drawn once (:func:`medseg_attn.segmentation.data.folds.assign_folds`: a patient's cases share a
fold) and recorded in ``RUN/splits.json``; fold k trains with ``data.folds = N, data.fold = k``, so its own
``split.json`` holds the same cases. Training a fold ends with ``RUN/fold_<k>/finished.json``: an interrupted CV
resumed skips the finished folds, continues the one that was running from its last checkpoint and starts the
rest. When every fold has finished, :func:`medseg_attn.segmentation.workflows.cross_validation.cross_validate`
predicts each case with the fold that did not see it. The layout is described in
:mod:`medseg_attn.segmentation.measures.postprocessing`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from medseg_attn.config import Config, save_config
from medseg_attn.errors import UserError
from medseg_attn.io.files import atomic_write_text
from medseg_attn.segmentation.data.datasets import load_dataset
from medseg_attn.segmentation.data.folds import assign_folds
from medseg_attn.segmentation.model.layout import fold_dir, is_cv_run
from medseg_attn.segmentation.workflows.train import TrainResult, train

logger = logging.getLogger(__name__)

__all__ = ["fold_splits", "train_cv"]


def fold_splits(cases: list[dict[str, Any]], folds: int, seed: int) -> list[dict[str, Any]]:
    """Per fold: ``{"fold", "train", "validation"}`` case names (what ``RUN/splits.json`` records)."""
    validation = assign_folds(cases, folds, seed)
    names = sorted(case["case"] for case in cases)
    result = []
    for fold, held_out in enumerate(validation):
        held = {case["case"] for case in held_out}
        result.append({"fold": fold, "train": [n for n in names if n not in held],
                       "validation": sorted(held)})
    return result


def train_cv(config: Config, output: str | Path, folds: int, fold: int | None = None, resume: bool = False,
             progress: bool = True, evaluate: bool = True) -> dict[int, TrainResult | None]:
    """Train the folds of a ``folds``-fold cross-validation into ``output`` (one after another, or only ``fold``).

    Args:
        config: the configuration every fold trains with (``data.dataset`` set).
        output: the CV run folder.
        folds: number of folds (>= 2).
        fold: train only this fold (e.g. one fold per torchrun job); None: every fold.
        resume: continue an interrupted CV run in ``output``.
        progress: progress bars.
        evaluate: run the out-of-fold evaluation once every fold has finished.

    Returns:
        fold -> its training result (None for a fold finished before this call).

    Raises:
        ValueError: bad fold numbers, a CV run already in ``output`` (without ``resume``), or a dataset whose
            cases no longer match the recorded splits.
    """
    output = Path(output)
    if folds < 2:
        raise UserError(f"--folds {folds}: cross-validation needs at least 2 folds")
    if fold is not None and not 0 <= fold < folds:
        raise UserError(f"--fold {fold}: expected 0..{folds - 1} for {folds}-fold cross-validation")
    if not config.data.dataset:
        raise UserError("no dataset given: set data.dataset in the config or pass --data")
    config = config.replace(data={"folds": folds, "dataset": str(Path(config.data.dataset).expanduser().resolve())})
    dataset = load_dataset(config.data.dataset)
    splits = fold_splits(dataset.training, folds, config.train.seed)
    grouped = any("patient" in case for case in dataset.training)
    _open_cv(output, config, folds, splits, resume or fold is not None, grouped)
    results: dict[int, TrainResult | None] = {}
    for k in range(folds) if fold is None else [fold]:
        folder = fold_dir(output, k)
        if (folder / "finished.json").is_file():
            logger.info("fold %d/%d: finished before, skipped", k, folds)
            results[k] = None
            continue
        started = (folder / "checkpoints" / "last.pt").is_file()
        logger.info("fold %d/%d: %s (%d training, %d validation cases)", k, folds,
                    "resuming" if started else "training", len(splits[k]["train"]), len(splits[k]["validation"]))
        result = train(config.replace(data={"fold": k}), folder, resume=started, progress=progress)
        atomic_write_text(folder / "finished.json", json.dumps({
            "fold": k, "epochs": result.epochs, "steps": result.steps, "seconds": round(result.seconds, 1),
            "stopped": result.stopped, "best_metric": result.best_metric, "best_epoch": result.best_epoch}, indent=2))
        results[k] = result
    if evaluate and all((fold_dir(output, k) / "finished.json").is_file() for k in range(folds)):
        from medseg_attn.segmentation.workflows.cross_validation import cross_validate

        cross_validate(output, device=config.train.device, progress=progress)
    return results


def _open_cv(output: Path, config: Config, folds: int, splits: list[dict[str, Any]], existing_ok: bool,
             grouped: bool) -> None:
    """Create the CV run folder (cv.json, splits.json, config.yaml), or check the one there."""
    record = {"folds": folds, "seed": config.train.seed, "dataset": config.data.dataset}
    if is_cv_run(output):
        saved = json.loads((output / "cv.json").read_text())
        if not existing_ok:
            raise UserError(f"{output}: already holds a cross-validation run; pass --resume to continue it or "
                             f"choose another --output")
        for key, value in record.items():
            if saved.get(key) != value:
                raise UserError(f"{output / 'cv.json'}: {key} is {saved.get(key)!r}, this run asks for {value!r}; "
                                 f"a CV run keeps its folds, seed and dataset")
        recorded = json.loads((output / "splits.json").read_text())["splits"]
        if recorded != splits:
            raise UserError(f"{output / 'splits.json'}: the dataset's cases differ from the recorded splits; "
                             f"start a new CV run for the changed dataset")
        return
    if output.exists() and any(output.iterdir()):
        raise UserError(f"{output}: not empty and not a cross-validation run; choose another --output")
    output.mkdir(parents=True, exist_ok=True)
    save_config(config, output / "config.yaml")
    atomic_write_text(output / "splits.json", json.dumps({"grouped_by": "patient" if grouped else "case",
                                                          "splits": splits}, indent=2))
    atomic_write_text(output / "cv.json", json.dumps(record, indent=2))  # last: marks a complete CV folder
