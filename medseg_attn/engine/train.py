"""Segmentation training: patches -> network -> DiceCE, sliding-window validation, checkpoints, TensorBoard.

Run folder layout::

    RUN/config.yaml            resolved configuration (spacing, labels, modality filled in)
    RUN/split.json             training / validation case names (or the fold)
    RUN/checkpoints/last.pt    after every epoch (resume from here)
    RUN/checkpoints/best.pt    best mean validation Dice so far
    RUN/history.csv            one row per epoch: loss, learning rate, validation Dice, timings
    RUN/training_curves.png    the same as a picture
    RUN/tensorboard/           scalars and validation overlays

The learning rate follows a warm-up then a cosine (or poly) decay over whichever ends first: ``max_epochs`` or
the wall-clock budget ``minutes``, so a run cut short by its budget still ends with a small learning rate.
Every epoch re-seeds all random generators from (seed, epoch), so ``--resume`` continues exactly where it
stopped.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from monai.data import CacheDataset, DataLoader, Dataset, list_data_collate
from monai.losses import DeepSupervisionLoss, DiceCELoss
from monai.metrics import DiceMetric
from tqdm import tqdm

from medseg_attn import __version__
from medseg_attn.config import Config, from_dict, save_config
from medseg_attn.data.datasets import check_cases, load_dataset, median_spacing, split_cases
from medseg_attn.data.io import atomic_write_text
from medseg_attn.data.transforms import Preprocessing, preprocessing, training_augmentation
from medseg_attn.engine.checkpoint import load_checkpoint, save_checkpoint
from medseg_attn.engine.predict import Predictor, resolve_device
from medseg_attn.engine.visualize import foreground_centre, overlay_rgb, save_training_curves
from medseg_attn.networks.factory import build_network

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "train", "learning_rate"]


@dataclass
class TrainResult:
    """What a training run ended with."""

    run_dir: Path
    best_metric: float | None
    best_epoch: int | None
    epochs: int
    steps: int
    seconds: float
    stopped: str  # why it stopped: max_epochs, time budget, early stopping


def learning_rate(base: float, step: int, progress: float, warmup_steps: int, schedule: str) -> float:
    """Warm-up (linear over ``warmup_steps``) then decay with ``progress`` in [0, 1]."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "poly":
        decay = (1.0 - progress) ** 0.9
    else:
        decay = 1.0
    return base * warm * max(decay, 1e-3)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class _Run:
    """State of one training run (kept together so the loop below reads top to bottom)."""

    def __init__(self, config: Config, output: Path, resume: bool, progress: bool) -> None:
        self.output = output
        self.progress = progress
        self.checkpoints = output / "checkpoints"
        if not resume and (self.checkpoints / "last.pt").exists():
            raise ValueError(f"{output}: already holds a training run; pass --resume to continue it or "
                             f"choose another --output")
        self.payload: dict[str, Any] | None = None
        if resume:
            last = self.checkpoints / "last.pt"
            if not last.exists():
                raise FileNotFoundError(f"{last}: nothing to resume (no last checkpoint in {output})")
            self.payload = load_checkpoint(last)
            saved = from_dict(self.payload["config"])
            if saved.model != config.model:
                raise ValueError(f"{last}: the model section differs from the checkpoint's; "
                                 f"resume with the run's own config ({output / 'config.yaml'})")
        if not config.data.dataset:
            raise ValueError("no dataset given: set data.dataset in the config or pass --data")
        self.dataset = load_dataset(config.data.dataset)
        labels = config.data.labels or self.dataset.labels
        problems = check_cases(self.dataset.training)
        if len(problems) == 1:
            raise ValueError(problems[0])
        if problems:  # every problem at once, one line each, so a dataset is fixed in one go
            listing = "\n  ".join(problems)
            raise ValueError(f"{len(problems)} problems in the training data:\n  {listing}")
        spacing = config.data.spacing
        if spacing == "auto":
            spacing = median_spacing(self.dataset.training)
        modality = config.data.modality if config.data.modality != "auto" else self.dataset.modality
        self.config = config.replace(data={"spacing": list(spacing) if spacing else None, "labels": labels,
                                           "modality": modality or "auto",
                                           "dataset": str(Path(config.data.dataset).expanduser().resolve())})
        self.labels = dict(sorted(labels.items()))
        self.prep = Preprocessing.resolve(self.config.data, modality, tuple(spacing) if spacing else None)
        self.device = resolve_device(self.config.train.device)
        self.train_cases, self.val_cases = self._split(resume)

    def _split(self, resume: bool) -> tuple[list[dict], list[dict]]:
        data, seed = self.config.data, self.config.train.seed
        split_file = self.output / "split.json"
        by_name = {c["case"]: c for c in self.dataset.training}
        if resume and split_file.exists():
            saved = json.loads(split_file.read_text())
            try:
                return [by_name[n] for n in saved["train"]], [by_name[n] for n in saved["validation"]]
            except KeyError as error:
                raise ValueError(f"{split_file}: case {error} is no longer in the dataset") from None
        train, val = split_cases(self.dataset.training, data.validation_fraction, data.folds, data.fold, seed)
        val = val[: data.max_validation_cases] if data.max_validation_cases else val
        record = {"seed": seed, "folds": data.folds, "fold": data.fold,
                  "validation_fraction": data.validation_fraction,
                  "train": [c["case"] for c in train], "validation": [c["case"] for c in val]}
        self.output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(split_file, json.dumps(record, indent=2))
        return train, val


def _datasets(run: _Run) -> tuple[Dataset, Dataset | None, mt.Compose]:
    num_classes = len(run.labels)
    pre = preprocessing(run.prep, ("image", "label"), num_classes=num_classes)
    train_transform = mt.Compose(pre + training_augmentation(run.config.data, num_classes))
    val_transform = mt.Compose(pre)
    data = run.config.data
    if data.cache:
        logger.info("caching %d training and %d validation cases", len(run.train_cases), len(run.val_cases))
        train_ds = CacheDataset(run.train_cases, train_transform, cache_rate=1.0, progress=run.progress,
                                num_workers=None)
        val_ds = CacheDataset(run.val_cases, val_transform, progress=False) if run.val_cases else None
    else:
        train_ds = Dataset(run.train_cases, train_transform)
        val_ds = Dataset(run.val_cases, val_transform) if run.val_cases else None
    return train_ds, val_ds, train_transform


def train(config: Config, output: str | Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train a segmentation network.

    Args:
        config: the run configuration (``data.dataset`` must be set).
        output: run folder (created).
        resume: continue the run in ``output`` from its last checkpoint.
        progress: show progress bars.

    Raises:
        ValueError / FileNotFoundError: bad data, config or run folder (message names the file).
    """
    output = Path(output)
    run = _Run(config, output, resume, progress)
    cfg, tcfg = run.config, run.config.train
    output.mkdir(parents=True, exist_ok=True)
    run.checkpoints.mkdir(exist_ok=True)
    save_config(cfg, output / "config.yaml")

    train_ds, val_ds, train_transform = _datasets(run)
    in_channels = _first_channels(train_ds)
    _seed_everything(tcfg.seed)  # same initial weights for the same seed
    network = build_network(cfg.model, run.prep.spatial_dims, in_channels, len(run.labels)).to(run.device)
    if tcfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(network.parameters(), lr=tcfg.lr, momentum=tcfg.momentum, nesterov=True,
                                    weight_decay=tcfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(network.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    loss_fn: torch.nn.Module = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    if cfg.model.deep_supervision:
        loss_fn = DeepSupervisionLoss(loss_fn, weight_mode="exp")
    use_amp = tcfg.amp == "on" or (tcfg.amp == "auto" and run.device.type == "cuda")
    amp_dtype = torch.bfloat16 if (run.device.type == "cpu" or torch.cuda.is_bf16_supported()) else torch.float16
    scaler = torch.amp.GradScaler(enabled=use_amp and amp_dtype == torch.float16)

    state = {"epoch": 0, "step": 0, "elapsed": 0.0, "best": None, "best_epoch": None, "bad": 0, "history": []}
    if run.payload is not None:
        network.load_state_dict(run.payload["model"])
        optimizer.load_state_dict(run.payload["optimizer"])
        if "scaler" in run.payload:
            scaler.load_state_dict(run.payload["scaler"])
        state.update(epoch=run.payload["epoch"], step=run.payload["step"], elapsed=run.payload["elapsed_seconds"],
                     best=run.payload["best_metric"], best_epoch=run.payload["best_epoch"],
                     bad=run.payload["bad_validations"], history=_read_history(output / "history.csv"))
        logger.info("resuming %s at epoch %d (step %d, %.0f s used)", output, state["epoch"], state["step"],
                    state["elapsed"])

    predictor = Predictor(network, run.prep, run.labels, cfg.data.patch_size, cfg.inference, run.device)
    writer = _summary_writer(output / "tensorboard")
    steps_per_epoch = tcfg.steps_per_epoch or max(1, math.ceil(len(train_ds) / _loader_batch(cfg)))
    total_steps = tcfg.max_epochs * steps_per_epoch
    budget = tcfg.minutes * 60.0 if tcfg.minutes else None
    clock_start = time.perf_counter() - state["elapsed"]
    validation_seconds = 0.0
    stopped = "max_epochs"

    def elapsed() -> float:
        return time.perf_counter() - clock_start

    def save(name: str) -> None:
        save_checkpoint({
            "model": network.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "epoch": state["epoch"], "step": state["step"], "elapsed_seconds": elapsed(),
            "best_metric": state["best"], "best_epoch": state["best_epoch"], "bad_validations": state["bad"],
            "config": cfg.to_dict(), "labels": {int(k): v for k, v in run.labels.items()},
            "preprocessing": run.prep.to_dict(), "in_channels": in_channels,
            "versions": {"medseg_attn": __version__, "torch": str(torch.__version__)},
        }, run.checkpoints / f"{name}.pt")

    while state["epoch"] < tcfg.max_epochs:
        epoch = state["epoch"]
        epoch_seed = tcfg.seed * 100_003 + epoch
        _seed_everything(epoch_seed)
        train_transform.set_random_state(seed=epoch_seed % (2**32))
        loader = DataLoader(train_ds, batch_size=_loader_batch(cfg), shuffle=True, drop_last=False,
                            num_workers=cfg.data.num_workers, collate_fn=list_data_collate,
                            generator=torch.Generator().manual_seed(epoch_seed))
        batches = _cycle(loader)
        network.train()
        losses, wait, epoch_start = [], 0.0, time.perf_counter()
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}", unit="step", leave=False,
                   disable=not progress, dynamic_ncols=True)
        for _ in bar:
            if budget is not None and elapsed() + validation_seconds * 1.1 >= budget:
                stopped = "time budget"
                break
            fetch = time.perf_counter()
            batch = next(batches)
            wait += time.perf_counter() - fetch
            image = batch["image"].to(run.device, non_blocking=True)
            label = batch["label"].to(run.device, non_blocking=True)
            progress_fraction = state["step"] / total_steps
            if budget is not None:
                progress_fraction = max(progress_fraction, elapsed() / budget)
            lr = learning_rate(tcfg.lr, state["step"], progress_fraction, tcfg.warmup_steps, tcfg.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(run.device.type, dtype=amp_dtype, enabled=use_amp):
                logits = network(image)
                loss = loss_fn(logits, label)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            state["step"] += 1
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.1e}")
            writer.add_scalar("train/loss", losses[-1], state["step"])
            writer.add_scalar("train/lr", lr, state["step"])
        bar.close()
        if not losses:  # the budget ran out before this epoch could start
            break
        state["epoch"] += 1
        epoch_seconds = time.perf_counter() - epoch_start
        row: dict[str, Any] = {"epoch": state["epoch"], "step": state["step"], "train_loss": float(np.mean(losses)),
                               "lr": lr, "epoch_seconds": round(epoch_seconds, 2),
                               "data_wait_fraction": round(wait / max(epoch_seconds, 1e-9), 4),
                               "elapsed_seconds": round(elapsed(), 1), "val_dice": None}
        writer.add_scalar("train/epoch_loss", row["train_loss"], state["epoch"])
        writer.add_scalar("time/data_wait_fraction", row["data_wait_fraction"], state["epoch"])
        last_epoch = state["epoch"] >= tcfg.max_epochs or stopped == "time budget"
        if val_ds is not None and (state["epoch"] % tcfg.val_interval == 0 or last_epoch):
            started = time.perf_counter()
            scores, overlay = _validate(predictor, val_ds, run.labels, tcfg.log_images)
            validation_seconds = time.perf_counter() - started
            row["val_dice"] = float(np.nanmean(list(scores.values())))
            row.update({f"val_dice_{name}": round(value, 4) for name, value in scores.items()})
            writer.add_scalar("val/dice_mean", row["val_dice"], state["epoch"])
            for name, value in scores.items():
                writer.add_scalar(f"val/dice_{name}", value, state["epoch"])
            if overlay is not None:
                writer.add_image("val/overlay", overlay, state["epoch"], dataformats="HWC")
            if state["best"] is None or row["val_dice"] > state["best"]:
                state.update(best=row["val_dice"], best_epoch=state["epoch"], bad=0)
                save("best")
            else:
                state["bad"] += 1
            logger.info("epoch %d: loss %.4f, validation Dice %.4f (best %.4f at epoch %d)", state["epoch"],
                        row["train_loss"], row["val_dice"], state["best"], state["best_epoch"])
        state["history"].append(row)
        save("last")
        _write_history(state["history"], output)
        writer.flush()
        if tcfg.patience is not None and state["bad"] >= tcfg.patience:
            stopped = "early stopping"
            break
        if stopped == "time budget":
            break
    if val_ds is None and state["epoch"] > 0:
        save("best")  # nothing to select on: the last weights are the best we have
    writer.close()
    logger.info("training stopped (%s) after %d epochs, %d steps, %.0f s", stopped, state["epoch"], state["step"],
                elapsed())
    return TrainResult(output, state["best"], state["best_epoch"], state["epoch"], state["step"], elapsed(), stopped)


def _loader_batch(cfg: Config) -> int:
    """Cases per loader batch: each case yields ``samples_per_case`` patches."""
    return max(1, cfg.train.batch_size // max(1, cfg.data.samples_per_case))


def _first_channels(dataset: Dataset) -> int:
    item = dataset[0]
    item = item[0] if isinstance(item, list) else item
    return int(item["image"].shape[0])


def _cycle(loader: DataLoader):
    while True:
        yield from loader


@torch.no_grad()
def _validate(predictor: Predictor, dataset: Dataset, labels: dict[int, str], image: bool):
    """Mean Dice per foreground class over the validation cases (sliding window on the network grid)."""
    metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    num_classes = len(labels)
    overlay = None
    for index in range(len(dataset)):
        item = dataset[index]
        probs = predictor.infer(item["image"])  # (K, *S)
        prediction = probs.argmax(0)
        label = torch.as_tensor(item["label"][0]).long().to(prediction.device)
        one_hot = torch.nn.functional.one_hot
        metric(one_hot(prediction, num_classes).movedim(-1, 0)[None], one_hot(label, num_classes).movedim(-1, 0)[None])
        if image and index == 0 and prediction.ndim == 3:
            centre = foreground_centre(label.cpu().numpy())
            picture = np.asarray(item["image"][0])[:, :, centre[2]]
            ref = label.cpu().numpy()[:, :, centre[2]]
            pred = prediction.cpu().numpy()[:, :, centre[2]]
            overlay = np.concatenate([overlay_rgb(np.rot90(picture), np.rot90(ref), classes=num_classes),
                                      overlay_rgb(np.rot90(picture), np.rot90(pred), classes=num_classes)], axis=1)
    values = metric.aggregate().cpu().numpy()
    names = [labels[i] for i in sorted(labels) if i > 0]
    return {name: float(v) for name, v in zip(names, values)}, overlay


def _summary_writer(path: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(path))


def _write_history(history: list[dict], output: Path) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in keys})
    atomic_write_text(output / "history.csv", buffer.getvalue())
    save_training_curves(history, output / "training_curves.png")


def _read_history(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    with path.open() as handle:
        for raw in csv.DictReader(handle):
            row: dict[str, Any] = {}
            for key, value in raw.items():
                if value in ("", None):
                    row[key] = None
                else:
                    try:
                        row[key] = int(value) if key in ("epoch", "step") else float(value)
                    except ValueError:
                        row[key] = value
            rows.append(row)
    return rows
