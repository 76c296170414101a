"""k-fold cross-validation as one run: every fold trained into ``RUN/fold_<k>``, then evaluated out of fold.

The folds are drawn once (:func:`medseg_attn.segmentation.data.folds.assign_folds`: a patient's cases share a
fold) and recorded in ``RUN/splits.json``; fold k trains with ``data.folds = N, data.fold = k``, so its own
``split.json`` holds the same cases. Training a fold ends with ``RUN/fold_<k>/finished.json``: an interrupted CV
resumed skips the finished folds, continues the one that was running from its last checkpoint and starts the
rest. A fold job must have the run's configuration (but for its budget and how it runs: :data:`JOB_KEYS`) and
trains with the run's plan (``RUN/plan.json``, the first fold's); a fine-tuned run records its source's SHA-256
in ``cv.json``. When every fold has finished,
:func:`medseg_attn.segmentation.workflows.cross_validation.cross_validate` predicts each case with the fold that
did not see it. The layout is described in
:mod:`medseg_attn.segmentation.measures.postprocessing`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from medseg_attn.config import Config, save_config
from medseg_attn.config.loading import from_dict, read_yaml
from medseg_attn.errors import UserError
from medseg_attn.io.files import atomic_write_text
from medseg_attn.io.manifest import recorded_run
from medseg_attn.model_layout import fold_dir, fold_states, is_cv_run, read_cv_record
from medseg_attn.segmentation.data.datasets import declared_channels, load_dataset
from medseg_attn.segmentation.data.folds import assign_folds
from medseg_attn.segmentation.data.planning import Plan
from medseg_attn.segmentation.workflows.finetune import check_source
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


# what a fold job may set otherwise than the CV run: its budget and how it runs, not what is learnt (train.init_from
# is compared by its checkpoint's checksum, recorded in cv.json)
JOB_KEYS = frozenset({"data.fold", "data.cache", "data.cache_dir", "data.preprocess_workers", "data.num_workers",
                      "data.prefetch", "train.minutes", "train.max_epochs", "train.patience", "train.device",
                      "train.amp", "train.compile", "train.log_images", "train.init_from", "inference.sw_batch_size",
                      "inference.precision"})


def train_cv(config: Config, output: str | Path, folds: int, fold: int | None = None, resume: bool = False,
             progress: bool = True, evaluate: bool = True) -> dict[int, TrainResult | None]:
    """Train the folds of a ``folds``-fold cross-validation into ``output`` (one after another, or only ``fold``).

    Every check comes before any work, and a refused job leaves ``output`` as it was: a fold job must have the
    run's configuration (but for :data:`JOB_KEYS`), the run's folds, seed and dataset, and, when fine-tuning, the
    same source checkpoint (by SHA-256). Every fold trains with the run's plan (``RUN/plan.json``, the first
    fold's). ``RUN/run.json`` records the job (:mod:`medseg_attn.io.manifest`).

    Args:
        config: the configuration every fold trains with (``data.dataset`` set).
        output: the CV run folder.
        folds: number of folds (>= 2).
        fold: train only this fold (e.g. one fold per torchrun job); None: every fold.
        resume: continue an interrupted CV run in ``output``.
        progress: progress bars.
        evaluate: run the out-of-fold evaluation once every fold has finished (again only when this call trained
            something or there is no evaluation yet).

    Returns:
        fold -> its training result (None for a fold finished before this call).

    Raises:
        ValueError: bad fold numbers, a CV run already in ``output`` (without ``resume``), a job whose
            configuration, plan, source checkpoint or dataset differs from the run's.
    """
    output = Path(output)
    if folds < 2:
        raise UserError(f"--folds {folds}: cross-validation needs at least 2 folds")
    if fold is not None and not 0 <= fold < folds:
        raise UserError(f"--fold {fold}: expected 0..{folds - 1} for {folds}-fold cross-validation")
    if not config.data.dataset:
        raise UserError("no dataset given: set data.dataset in the config or pass --data")
    config = config.replace(data={"folds": folds, "dataset": str(Path(config.data.dataset).expanduser().resolve())})
    dataset = load_dataset(config.data.dataset, config.data.cache_dir)
    splits = fold_splits(dataset.training, folds, config.train.seed)
    grouped = any("patient" in case for case in dataset.training)
    existing = _check_cv(output, config, folds, splits, resume or fold is not None)
    chosen = list(range(folds)) if fold is None else [fold]
    states = fold_states(output) if existing else {k: "missing" for k in range(folds)}
    source = None
    if config.train.init_from and any(states[k] == "missing" for k in chosen):  # folds still to start from it
        source = check_source(config.train.init_from, config.model, declared_channels(dataset))
        config = config.replace(train={"init_from": source["path"]})
    if existing and any(states[k] == "missing" for k in chosen):
        _check_source_record(output, source)
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 records the job
    with recorded_run(output if main else None, "train") as manifest:  # RUN/run.json (each fold has its own)
        if not existing:
            _create_cv(output, config, folds, splits, grouped, source)
        manifest.add_input(config.data.dataset, name="dataset", checksum=Path(config.data.dataset).is_file())
        if source is not None:
            manifest.add_input(source["checkpoint"], name="init_from")
        results = _train_folds(config, output, folds, chosen, splits, progress)
        manifest.update(result={f"fold_{k}": "finished before" if result is None else {
            "epochs": result.epochs, "best_metric": result.best_metric, "stopped": result.stopped}
            for k, result in results.items()})
        trained = any(result is not None for result in results.values())
        if evaluate and all((fold_dir(output, k) / "finished.json").is_file() for k in range(folds)) and (
                trained or not (output / "cv" / "summary.json").is_file()):
            from medseg_attn.segmentation.workflows.cross_validation import cross_validate

            cross_validate(output, device=config.train.device, progress=progress)
    return results


def _train_folds(config: Config, output: Path, folds: int, chosen: list[int], splits: list[dict[str, Any]],
                 progress: bool) -> dict[int, TrainResult | None]:
    results: dict[int, TrainResult | None] = {}
    run_plan = output / "plan.json"
    for k in chosen:
        folder = fold_dir(output, k)
        if (folder / "finished.json").is_file():
            logger.info("fold %d/%d: finished before, skipped", k, folds)
            results[k] = None
            continue
        _share_plan(output, folds)
        started = (folder / "checkpoints" / "last.pt").is_file()
        logger.info("fold %d/%d: %s (%d training, %d validation cases)", k, folds,
                    "resuming" if started else "training", len(splits[k]["train"]), len(splits[k]["validation"]))
        result = train(config.replace(data={"fold": k}), folder, resume=started, progress=progress,
                       plan=run_plan if run_plan.is_file() and not started else None)
        _share_plan(output, folds)
        atomic_write_text(folder / "finished.json", json.dumps({
            "fold": k, "epochs": result.epochs, "steps": result.steps, "seconds": round(result.seconds, 1),
            "stopped": result.stopped, "best_metric": result.best_metric, "best_epoch": result.best_epoch}, indent=2))
        results[k] = result
    return results


def _share_plan(output: Path, folds: int) -> None:
    """``RUN/plan.json``, the plan every fold trains with: the first fold's to have planned."""
    if not (output / "plan.json").is_file():
        planned = [fold_dir(output, k) / "plan.json" for k in range(folds)]
        first = next((path for path in planned if path.is_file()), None)
        if first is not None:
            atomic_write_text(output / "plan.json", first.read_text())


def _differences(saved: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key (run V, this job W)`` for each configuration key (but :data:`JOB_KEYS`) whose values differ."""
    found = []
    for key in dict.fromkeys([*new, *saved]):
        name, old, value = f"{prefix}{key}", saved.get(key), new.get(key)
        if isinstance(old, dict) and isinstance(value, dict) and name != "data.labels":
            found += _differences(old, value, f"{name}.")
        elif name not in JOB_KEYS and old != value:
            found.append(f"{name} (run {old!r}, this job {value!r})")
    return found


def _check_cv(output: Path, config: Config, folds: int, splits: list[dict[str, Any]], existing_ok: bool) -> bool:
    """Whether ``output`` holds this CV run already (True) or is free for it (False); refuses anything else."""
    if not is_cv_run(output):
        if output.exists() and any(output.iterdir()):
            raise UserError(f"{output}: not empty and not a cross-validation run; choose another --output")
        return False
    if not existing_ok:
        raise UserError(f"{output}: already holds a cross-validation run; pass --resume to continue it or "
                        f"choose another --output")
    saved = read_cv_record(output)
    for key, value in {"folds": folds, "seed": config.train.seed, "dataset": config.data.dataset}.items():
        if saved.get(key) != value:
            raise UserError(f"{output / 'cv.json'}: {key} is {saved.get(key)!r}, this run asks for {value!r}; "
                            f"a CV run keeps its folds, seed and dataset")
    recorded = json.loads((output / "splits.json").read_text())["splits"]
    if recorded != splits:
        raise UserError(f"{output / 'splits.json'}: the dataset's cases differ from the recorded splits; "
                        f"start a new CV run for the changed dataset")
    differing = _differences(from_dict(read_yaml(output / "config.yaml"), Config).to_dict(), config.to_dict())
    if differing:
        more = f" and {len(differing) - 3} more" if len(differing) > 3 else ""
        raise UserError(f"{output / 'config.yaml'}: this job's configuration differs from the CV run's in "
                        f"{'; '.join(differing[:3])}{more}; every fold trains with the run's configuration (only "
                        f"the budget and how a job runs may differ): use its values or start a new CV run")
    _check_plans(output, folds)
    return True


def _check_plans(output: Path, folds: int) -> None:
    """Every fold's plan.json against the run's (``RUN/plan.json``, else the first fold's): one plan for all."""
    paths = [output / "plan.json"] + [fold_dir(output, k) / "plan.json" for k in range(folds)]
    plans = [(path, Plan.from_dict(json.loads(path.read_text()), str(path))) for path in paths if path.is_file()]
    if not plans:
        return
    where, reference = plans[0]
    expected = {**reference.resolved.to_dict(), "ct_statistics": reference.ct_statistics}
    for path, plan in plans[1:]:
        values = {**plan.resolved.to_dict(), "ct_statistics": plan.ct_statistics}
        differing = [f"{key} (run {expected[key]!r}, this fold {value!r})" for key, value in values.items()
                     if value != expected[key]]
        if differing:
            raise UserError(f"{path}: this fold's plan differs from the CV run's ({where}) in {'; '.join(differing)}; "
                            f"the folds of a CV run share one plan: start a new CV run")


def _check_source_record(output: Path, source: dict[str, str] | None) -> None:
    """The folds still to start fine-tune from the checkpoint the run recorded (by SHA-256), or all train from
    scratch. Runs written before cv.json recorded it are not checked."""
    saved = read_cv_record(output)
    if "init_from" not in saved:
        return
    recorded = saved["init_from"]
    if recorded is None and source is not None:
        raise UserError(f"{output}: this CV run trains its folds from scratch; --init-from {source['path']} would "
                        f"start the remaining folds from other weights: drop it or start a new CV run")
    if recorded is not None and source is None:
        raise UserError(f"{output}: this CV run fine-tunes every fold from {recorded['path']} (train.init_from); "
                        f"give it (--init-from) for the remaining folds, or start a new CV run")
    if recorded is not None and source is not None and recorded["sha256"] != source["sha256"]:
        raise UserError(f"{source['checkpoint']}: not the checkpoint this CV run fine-tunes from (sha256 "
                        f"{source['sha256'][:16]}..., the run recorded {recorded['sha256'][:16]}... of "
                        f"{recorded['checkpoint']}); the remaining folds must start from the same weights: give "
                        f"that file (--init-from) or start a new CV run")


def _create_cv(output: Path, config: Config, folds: int, splits: list[dict[str, Any]], grouped: bool,
               source: dict[str, str] | None) -> None:
    """Create the CV run folder: config.yaml, splits.json, cv.json (folds, seed, dataset, the fine-tuning source)."""
    output.mkdir(parents=True, exist_ok=True)
    save_config(config, output / "config.yaml")
    atomic_write_text(output / "splits.json", json.dumps({"grouped_by": "patient" if grouped else "case",
                                                          "splits": splits}, indent=2))
    record = {"folds": folds, "seed": config.train.seed, "dataset": config.data.dataset, "init_from": source}
    atomic_write_text(output / "cv.json", json.dumps(record, indent=2))  # last: marks a complete CV folder
