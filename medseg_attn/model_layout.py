"""THE model-folder layout: a run, a cross-validation run (its folds), a MONAI bundle; which checkpoint a model
path means (:func:`find_checkpoint`), and which folders an output must keep out of
(:func:`check_output_beside_models`). Both tasks read models through it; it names no task.

Layout::

    RUN/checkpoints/best.pt     a run folder (training/loop.py): the best and the last checkpoint, with RUN/run.json,
    RUN/checkpoints/last.pt     RUN/config.yaml, RUN/history.csv, RUN/tensorboard/ ...
    BUNDLE/models/model.pt      a MONAI bundle medseg-attn exported (segmentation/export/bundle.py), with
    BUNDLE/configs/metadata.json  its TorchScript network and configs
    CV/cv.json                  a cross-validation run (segmentation/workflows/crossval.py): folds, seed, dataset
    CV/splits.json              every fold's training and validation cases (patients never cross folds)
    CV/config.yaml, plan.json   the configuration and plan every fold trains with (the first fold's plan)
    CV/run.json                 how the run was made (io/manifest.py); CV/cv/run.json likewise for ``cv``
    CV/fold_<k>/                a run folder per fold (checkpoints/best.pt, plan.json, split.json, ...)
    CV/fold_<k>/finished.json   written when fold k's training ended
    CV/cv/                      out-of-fold predictions, metrics per fold and pooled, summary (``medseg-attn cv``)
    CV/postprocessing.json      per class: keep the largest connected component, or remove components below a
                                size (each chosen where it raised the out-of-fold Dice)

``predict --model CV`` ensembles the folds (their class probabilities averaged) and applies the postprocessing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from medseg_attn.errors import UserError
from medseg_attn.io.lock import LOCK_NAME

__all__ = ["CHECKPOINT_NAMES", "check_output_beside_models", "cv_members", "find_checkpoint", "fold_count",
           "fold_dir", "fold_folders", "fold_states", "has_checkpoint", "is_bundle", "is_cv_run", "read_cv_record",
           "task_checkpoint"]

CHECKPOINT_NAMES = ("best.pt", "last.pt")  # a run's checkpoints/, in the order a model path means them


def is_cv_run(path: str | Path) -> bool:
    """Whether ``path`` is a cross-validation run folder (it holds ``cv.json``)."""
    return (Path(path) / "cv.json").is_file()


def fold_dir(run: str | Path, fold: int) -> Path:
    return Path(run) / f"fold_{fold}"


def fold_folders(run: str | Path) -> list[Path]:
    """The ``fold_*`` folders there are in ``run``, by name."""
    return sorted((path for path in Path(run).glob("fold_*") if path.is_dir()), key=lambda path: path.name)


def has_checkpoint(run: str | Path) -> bool:
    """Whether the run folder ``run`` holds a trained checkpoint (``checkpoints/best.pt`` or ``last.pt``)."""
    return any((Path(run) / "checkpoints" / name).is_file() for name in CHECKPOINT_NAMES)


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a MONAI bundle folder medseg-attn exported."""
    return (Path(path) / "configs" / "metadata.json").is_file() and (Path(path) / "models" / "model.pt").is_file()


def read_cv_record(run: str | Path) -> dict:
    """``RUN/cv.json``: folds, seed, dataset (and the fine-tuning source with its checksum).

    Raises:
        UserError: not readable as such a record (one line naming the file).
    """
    path = Path(run) / "cv.json"
    try:
        record = json.loads(path.read_text())
        int(record["folds"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path}: not a cross-validation run record ({type(error).__name__}: {error})") from None
    return record


def fold_count(run: str | Path) -> int:
    """How many folds the CV run ``run`` has (its ``cv.json``)."""
    return int(read_cv_record(run)["folds"])


def fold_states(run: str | Path) -> dict[int, str]:
    """Per fold of the CV run: 'finished' (``finished.json``), 'started' (a checkpoint, not finished: training or
    interrupted) or 'missing' (no checkpoint yet)."""
    run = Path(run)
    states = {}
    for fold in range(fold_count(run)):
        path = fold_dir(run, fold)
        trained = has_checkpoint(path)
        states[fold] = "finished" if (path / "finished.json").is_file() else "started" if trained else "missing"
    return states


def cv_members(run: str | Path, folds: list[int] | None = None) -> list[Path]:
    """The run folders of the folds of ``run`` (all, or ``folds``), each with a trained checkpoint.

    Raises:
        ValueError: a fold outside the run, or one without a checkpoint yet.
    """
    run = Path(run)
    count = fold_count(run)
    chosen = list(range(count)) if folds is None else list(folds)
    members = []
    for fold in chosen:
        if not 0 <= fold < count:
            raise UserError(f"{run}: --folds {fold}: this cross-validation run has folds 0..{count - 1}")
        path = fold_dir(run, fold)
        if not has_checkpoint(path):
            raise UserError(f"{path}: fold {fold} has no checkpoint yet; train it (medseg-attn train --output {run} "
                             f"--resume) or choose trained folds with --folds")
        members.append(path)
    return members


def find_checkpoint(model: str | Path, prefer: str = "best") -> Path:
    """A checkpoint file, ``RUN_DIR/checkpoints/{best,last}.pt`` for a run folder, or ``BUNDLE/models/model.pt``
    for a MONAI bundle medseg-attn exported.

    Raises:
        FileNotFoundError: nothing to load at ``model``.
    """
    path = Path(model).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if is_cv_run(path):  # a cross-validation run: its folds are the models
            folds = [fold.name for fold in fold_folders(path)]
            raise FileNotFoundError(f"{path}: is a cross-validation run ({', '.join(folds) or 'no folds yet'}); "
                                    f"predict takes it whole (the fold ensemble); here give one fold, e.g. "
                                    f"{path / (folds[0] if folds else 'fold_0')}")
        if is_bundle(path):
            return path / "models" / "model.pt"
        for folder in (path / "checkpoints", path):
            for name in (f"{prefer}.pt", *CHECKPOINT_NAMES):
                if (folder / name).is_file():
                    return folder / name
        raise FileNotFoundError(f"{path}: no checkpoints/best.pt or checkpoints/last.pt in this run folder")
    raise FileNotFoundError(f"{path}: model not found (expected a run folder or a .pt checkpoint)")


def task_checkpoint(model: str | Path) -> Path:
    """A checkpoint that tells which task ``model`` belongs to: :func:`find_checkpoint`'s, or for a
    cross-validation run its first fold's.

    Raises:
        FileNotFoundError: nothing to load at ``model``.
    """
    path = Path(model).expanduser()
    if is_cv_run(path):
        folds = fold_folders(path)
        if not folds:
            raise FileNotFoundError(f"{path}: cross-validation run without trained folds")
        return find_checkpoint(folds[0])
    return find_checkpoint(path)



MODEL_PARTS = ("checkpoints", "models", "configs")  # folders of a run / MONAI bundle that hold the model itself
RUN_MARKERS = ("run.json", "cv.json", "config.yaml", *MODEL_PARTS)  # what makes a folder a run (or a bundle)


def _model_owner(path: Path) -> Path:
    """The folder that owns a (resolved) model path: a checkpoint's run (``RUN/checkpoints/best.pt`` -> ``RUN``), a
    fold's cross-validation run (``CV/fold_0`` -> ``CV``), a bundle of ``models/model.pt``, a file's folder."""
    folder = path if path.is_dir() else path.parent
    if folder.name in MODEL_PARTS:
        folder = folder.parent
    while folder.name.startswith("fold_") and is_cv_run(folder.parent):
        folder = folder.parent
    return folder


def _free_for_predict(folder: Path) -> bool:
    """A sub-folder of a run that ``predict`` may write into: new, empty, or filled by an earlier ``predict`` (its
    ``run.json`` says so, or its lock file is left from a killed one)."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return not folder.exists() or folder.is_dir()
    if (folder / LOCK_NAME).is_file():
        return True
    try:
        return json.loads((folder / "run.json").read_text()).get("command") == "predict"
    except (OSError, ValueError, AttributeError):
        return False


def check_output_beside_models(output: str | Path, models: Iterable[str | Path], option: str = "--output") -> None:
    """Refuse an output folder that would write into a model being read or into any folder its run owns: the
    model's folder itself (a run, a cross-validation run or a bundle: its ``run.json``, reports and config live
    there), the folder of a model file, ``checkpoints/``, ``models/``, ``configs/``, ``fold_<k>/`` and, for a run
    (or a fold of a cross-validation run: the whole CV run), every existing folder below it that ``predict`` did not
    fill (``cv/`` with the out-of-fold predictions ``cv`` scored, ``tensorboard/`` ...). A new sub-folder of a run
    (``RUN/predictions``), or one an earlier ``predict`` filled, is fine.

    Raises:
        UserError: one line naming the output, the model and the folder of the run.
    """

    given = Path(output).expanduser()
    resolved = given.resolve()
    for model in models:
        path = Path(model).expanduser()
        if not path.exists():
            continue
        owner = _model_owner(path.resolve())
        if not resolved.is_relative_to(owner):
            continue
        inside = resolved.relative_to(owner).parts
        run = any((owner / marker).exists() for marker in RUN_MARKERS)
        if (not inside or inside[0] in MODEL_PARTS or inside[0].startswith("fold_")
                or (run and not _free_for_predict(owner / inside[0]))):
            part = owner / inside[0] if inside else owner
            raise UserError(f"{given}: would write into the model {path} being read ({part} belongs to its run); "
                            f"choose another {option} (a new folder, e.g. {owner / 'predictions'})")
