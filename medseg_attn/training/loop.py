"""The training loop both tasks share: schedule, seeding, budget, checkpoints, history, TensorBoard, early stopping.

A task (segmentation in :mod:`medseg_attn.segmentation.train`, classification in :mod:`medseg_attn.classification.train`)
builds its network, optimizer, data and validation, describes them in a :class:`TrainTask`, and calls
:func:`fit`, which owns everything else:

* the learning rate: linear warm-up, then cosine / poly decay over whichever ends first, ``max_epochs`` or the
  wall-clock budget ``minutes`` (:func:`learning_rate`);
* exact resume: every epoch re-seeds all random generators from (seed, epoch) (:func:`epoch_seed`), and the
  checkpoint holds model, optimizer, loss scaler, counters and the best value so far;
* the budget (validation time included), early stopping (``patience`` validations without improvement), mixed
  precision, the progress bar, TensorBoard scalars and images, ``history.csv`` and its PNG curves, atomic
  ``best.pt`` / ``last.pt`` checkpoints;
* DDP under ``torchrun``: the network is wrapped in ``DistributedDataParallel`` for the training forward, rank 0
  decides the budget and the wall-clock part of the learning rate for every rank, the epoch loss is averaged over
  ranks, and only rank 0 writes checkpoints (the unwrapped network, so a run resumes with any number of
  processes), history and TensorBoard. The task shards its own data and reduces its own validation
  (:mod:`medseg_attn.training.distributed`).
"""

from __future__ import annotations

import csv
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from medseg_attn import __version__
from medseg_attn.config import TrainConfig, from_dict
from medseg_attn.io.tables import write_csv
from medseg_attn.training.checkpoint import load_checkpoint, save_checkpoint
from medseg_attn.training.distributed import Distributed

logger = logging.getLogger(__name__)

__all__ = [
    "TrainResult",
    "TrainTask",
    "Validation",
    "build_optimizer",
    "epoch_seed",
    "fit",
    "learning_rate",
    "open_run",
    "read_history",
    "seed_everything",
    "summary_writer",
    "write_history",
]


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
    epochs_run: int = 0  # epochs trained by this call (0: a resumed run whose budget or epochs were already used)


@dataclass
class Validation:
    """One validation's outcome, as the task reports it to :func:`fit`."""

    metric: float  # the monitored value (best.pt follows it)
    row: dict[str, Any] = field(default_factory=dict)  # extra history.csv columns
    scalars: dict[str, float] = field(default_factory=dict)  # TensorBoard tag -> value
    images: dict[str, np.ndarray] = field(default_factory=dict)  # TensorBoard tag -> (H, W, 3) image
    text: str = ""  # for the log line, e.g. "validation Dice 0.8123"


@dataclass
class TrainTask:
    """The task-specific parts of a run; :func:`fit` does the rest.

    Attributes:
        network: the model (already on the device).
        optimizer: its optimizer.
        loss: (model, batch) -> scalar loss; called inside autocast with the model to run (the network, or its
            DDP wrapper under torchrun), must move the batch to the device itself.
        loader: epoch seed -> an iterable of this rank's batches for that epoch (re-seed transforms, build the
            DataLoader).
        steps_per_epoch: optimizer steps per epoch, the same on every rank (the loader is cycled if shorter).
        validate: runs a validation, or None when there is no validation set; under DDP every rank calls it and
            it must return the same metric on every rank (reduce across ranks inside).
        metric: history column of the monitored value (``val_dice``, ``val_balanced_accuracy``, ...).
        higher_is_better: direction of ``metric``.
        payload: task content of every checkpoint (config, labels or classes, preprocessing, ...).
        curves: draws the history (list of rows) into a PNG path.
    """

    network: nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable[[nn.Module, dict], torch.Tensor]
    loader: Callable[[int], Iterable[dict]]
    steps_per_epoch: int
    validate: Callable[[], Validation] | None
    metric: str
    payload: dict[str, Any]
    curves: Callable[[list[dict], Path], Any]
    higher_is_better: bool = True


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


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: a resumed run draws exactly what the uninterrupted run drew."""
    return seed * 100_003 + epoch


def build_optimizer(network: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum, as configured; PyTorch's fused implementation (one kernel for all
    parameters: the same update, several times faster on CPU; timing: docs/benchmarks.md, "Timings behind design
    choices")."""
    if train.optimizer == "sgd":
        return torch.optim.SGD(network.parameters(), lr=train.lr, momentum=train.momentum, nesterov=True,
                               weight_decay=train.weight_decay, fused=True)
    return torch.optim.AdamW(network.parameters(), lr=train.lr, weight_decay=train.weight_decay, fused=True)


def open_run(config: Any, output: Path, resume: bool) -> dict[str, Any] | None:
    """Check the run folder; with ``resume`` load and return its last checkpoint.

    Raises:
        ValueError: ``output`` already holds a run (and not ``resume``), or the model section changed.
        FileNotFoundError: ``resume`` without a last checkpoint.
    """
    last = output / "checkpoints" / "last.pt"
    if not resume and last.exists():
        raise ValueError(f"{output}: already holds a training run; pass --resume to continue it or "
                         f"choose another --output")
    if not resume:
        return None
    if not last.exists():
        raise FileNotFoundError(f"{last}: nothing to resume (no last checkpoint in {output})")
    payload = load_checkpoint(last)
    saved = from_dict(payload["config"], type(config))
    if saved.model != config.model:
        raise ValueError(f"{last}: the model section differs from the checkpoint's; "
                         f"resume with the run's own config ({output / 'config.yaml'})")
    return payload


def summary_writer(path: Path):
    """A TensorBoard ``SummaryWriter`` writing into ``path``."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(path))


def write_history(history: list[dict], output: Path, curves: Callable[[list[dict], Path], Any] | None) -> None:
    """``output/history.csv`` (atomically) and, with ``curves``, ``output/training_curves.png``."""
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    write_csv(output / "history.csv", history, keys)
    if curves is not None:
        curves(history, output / "training_curves.png")


def read_history(path: Path) -> list[dict]:
    """Rows of a ``history.csv`` (numbers as numbers, empty cells as None)."""
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


class _NoWriter:
    """Stands in for the TensorBoard writer on ranks other than 0."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def _cycle(batches: Iterable[dict]) -> Iterator[dict]:
    while True:
        yield from batches


def fit(task: TrainTask, train: TrainConfig, output: Path, payload: dict[str, Any] | None,
        device: torch.device, progress: bool = True, dist: Distributed | None = None) -> TrainResult:
    """Run the training loop of ``task`` into the run folder ``output``.

    Args:
        task: network, optimizer, loss, data and validation of the task.
        train: the ``train`` section (schedule, budget, validation interval, patience, seed, AMP).
        output: run folder; ``checkpoints/``, ``history.csv``, ``training_curves.png``, ``tensorboard/``.
        payload: the last checkpoint to resume from (from :func:`open_run`), or None.
        device: where the network is.
        progress: show a progress bar per epoch.
        dist: this process's place in a torchrun job (None: a single process).
    """
    dist = dist or Distributed()
    network, optimizer = task.network, task.optimizer
    model: nn.Module = network
    checkpoints = output / "checkpoints"
    if dist.is_main:
        checkpoints.mkdir(parents=True, exist_ok=True)
    use_amp = train.amp == "on" or (train.amp == "auto" and device.type == "cuda")
    amp_dtype = torch.bfloat16 if (device.type == "cpu" or torch.cuda.is_bf16_supported()) else torch.float16
    scaler = torch.amp.GradScaler(enabled=use_amp and amp_dtype == torch.float16)

    state = {"epoch": 0, "step": 0, "elapsed": 0.0, "best": None, "best_epoch": None, "bad": 0, "history": []}
    if payload is not None:
        network.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        if "scaler" in payload:
            scaler.load_state_dict(payload["scaler"])
        state.update(epoch=payload["epoch"], step=payload["step"], elapsed=payload["elapsed_seconds"],
                     best=payload["best_metric"], best_epoch=payload["best_epoch"], bad=payload["bad_validations"],
                     history=read_history(output / "history.csv"))
        logger.info("resuming %s at epoch %d (step %d, %.0f s used)", output, state["epoch"], state["step"],
                    state["elapsed"])

    start_epoch = state["epoch"]
    if dist.enabled:  # after loading the checkpoint: DDP broadcasts rank 0's weights once, here
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":  # batch norm (model.norm: batch) over the global batch; in place on children
            nn.SyncBatchNorm.convert_sync_batchnorm(network)
        model = DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)
    if train.compile:  # the training forward only; checkpoints keep the plain network's parameter names
        model = torch.compile(model)
    progress = progress and dist.is_main
    writer = summary_writer(output / "tensorboard") if dist.is_main else _NoWriter()
    steps_per_epoch = task.steps_per_epoch
    total_steps = train.max_epochs * steps_per_epoch
    budget = train.minutes * 60.0 if train.minutes else None
    clock_start = time.perf_counter() - state["elapsed"]
    validation_seconds = 0.0
    stopped = "max_epochs"

    def elapsed() -> float:
        return time.perf_counter() - clock_start

    def save(name: str) -> None:
        if not dist.is_main:
            return
        save_checkpoint({
            "model": network.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "epoch": state["epoch"], "step": state["step"], "elapsed_seconds": elapsed(),
            "best_metric": state["best"], "best_epoch": state["best_epoch"], "bad_validations": state["bad"],
            **task.payload,
            "world_size": dist.world_size,
            "versions": {"medseg_attn": __version__, "torch": str(torch.__version__)},
        }, checkpoints / f"{name}.pt")

    def better(value: float) -> bool:
        if state["best"] is None:
            return True
        return value > state["best"] if task.higher_is_better else value < state["best"]

    while state["epoch"] < train.max_epochs:
        epoch = state["epoch"]
        seed = epoch_seed(train.seed, epoch)
        seed_everything(seed + 1_000_003 * dist.rank)  # ranks draw different dropout / crops, reproducibly
        batches = _cycle(task.loader(seed))
        network.train()
        losses, wait, epoch_start = [], 0.0, time.perf_counter()
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}", unit="step", leave=False,
                   disable=not progress, dynamic_ncols=True)
        for _ in bar:
            used = elapsed()
            if budget is not None and dist.enabled:  # rank 0's clock rules: same stop, same learning rate
                used, = dist.from_main(used)
            if budget is not None and used + validation_seconds * 1.1 >= budget:
                stopped = "time budget"
                break
            fetch = time.perf_counter()
            batch = next(batches)
            wait += time.perf_counter() - fetch
            progress_fraction = state["step"] / total_steps
            if budget is not None:
                progress_fraction = max(progress_fraction, used / budget)
            lr = learning_rate(train.lr, state["step"], progress_fraction, train.warmup_steps, train.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                loss = task.loss(model, batch)
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
        epoch_loss = float(np.mean(losses))
        if dist.enabled:
            epoch_loss = float(dist.sum(torch.tensor([epoch_loss], dtype=torch.float64, device=device)).item()
                               / dist.world_size)
        row: dict[str, Any] = {"epoch": state["epoch"], "step": state["step"], "train_loss": epoch_loss,
                               "lr": lr, "epoch_seconds": round(epoch_seconds, 2),
                               "data_wait_fraction": round(wait / max(epoch_seconds, 1e-9), 4),
                               "elapsed_seconds": round(elapsed(), 1), task.metric: None}
        writer.add_scalar("train/epoch_loss", row["train_loss"], state["epoch"])
        writer.add_scalar("time/data_wait_fraction", row["data_wait_fraction"], state["epoch"])
        last_epoch = state["epoch"] >= train.max_epochs or stopped == "time budget"
        if task.validate is not None and (state["epoch"] % train.val_interval == 0 or last_epoch):
            started = time.perf_counter()
            result = task.validate()
            validation_seconds = time.perf_counter() - started
            if dist.enabled:  # every rank must take the same decisions (best, patience) from the same value
                result.metric, = dist.from_main(result.metric)
            row[task.metric] = result.metric
            row.update(result.row)
            for tag, value in result.scalars.items():
                writer.add_scalar(tag, value, state["epoch"])
            for tag, picture in result.images.items():
                writer.add_image(tag, picture, state["epoch"], dataformats="HWC")
            if better(result.metric):
                state.update(best=result.metric, best_epoch=state["epoch"], bad=0)
                save("best")
            else:
                state["bad"] += 1
            logger.info("epoch %d: loss %.4f, %s (best %.4f at epoch %d)", state["epoch"], row["train_loss"],
                        result.text, state["best"], state["best_epoch"])
        state["history"].append(row)
        save("last")
        if dist.is_main:
            write_history(state["history"], output, task.curves)
        writer.flush()
        if train.patience is not None and state["bad"] >= train.patience:
            stopped = "early stopping"
            break
        if stopped == "time budget":
            break
    if task.validate is None and state["epoch"] > start_epoch:
        save("best")  # nothing to select on: the last weights are the best we have
    writer.close()
    dist.barrier()  # every rank returns once rank 0 has written the last checkpoint
    logger.info("training stopped (%s) after %d epochs, %d steps, %.0f s", stopped, state["epoch"], state["step"],
                elapsed())
    return TrainResult(output, state["best"], state["best_epoch"], state["epoch"], state["step"], elapsed(), stopped,
                       state["epoch"] - start_epoch)
