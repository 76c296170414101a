"""The training loop both tasks share: schedule, seeding, budget, checkpoints, history, TensorBoard, early stopping.

A task (segmentation in :mod:`medseg_attn.segmentation.workflows.train`, classification in
:mod:`medseg_attn.classification.train`) builds its network, optimizer, data and validation, describes them in a
:class:`TrainTask`, and calls :func:`fit`, which owns everything else:

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
  (:mod:`medseg_attn.runtime.distributed`).

The state of a run (counters, seconds, best value, history) is a :class:`~medseg_attn.training.state.TrainState`.
"""

from __future__ import annotations

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
from medseg_attn.config import TrainConfig, differing_keys, from_dict
from medseg_attn.errors import UserError
from medseg_attn.runtime.distributed import Distributed
from medseg_attn.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from medseg_attn.training.state import Best, TrainState, read_history, write_history

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


def open_run(config: Any, output: Path, resume: bool) -> Checkpoint | None:
    """Check the run folder; with ``resume`` load and return its last checkpoint.

    Raises:
        ValueError: ``output`` already holds a run (and not ``resume``), or the model section changed.
        FileNotFoundError: ``resume`` without a last checkpoint.
    """
    last = output / "checkpoints" / "last.pt"
    if not resume and last.exists():
        raise UserError(f"{output}: already holds a training run; pass --resume to continue it or "
                         f"choose another --output")
    if not resume:
        return None
    if not last.exists():
        raise FileNotFoundError(f"{last}: nothing to resume (no last checkpoint in {output})")
    checkpoint = load_checkpoint(last)
    saved = from_dict(checkpoint.config, type(config)).model  # keys added since: as the run was trained
    differing = [f"model.{key}={a!r} (this config {b!r})" for key, a, b in differing_keys(saved, config.model)]
    if differing:
        raise UserError(f"{last}: the model section differs from the checkpoint's in {', '.join(differing)}; "
                        f"resume with the run's own config ({output / 'config.yaml'}) and --set those keys")
    return checkpoint


def summary_writer(path: Path):
    """A TensorBoard ``SummaryWriter`` writing into ``path``."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(path))


class _NoWriter:
    """Stands in for the TensorBoard writer on ranks other than 0."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def _cycle(batches: Iterable[dict]) -> Iterator[dict]:
    while True:
        yield from batches


class _Clock:
    """Wall-clock seconds of the run, going on from the seconds a resumed run had already used."""

    def __init__(self, used: float) -> None:
        self._start = time.perf_counter() - used

    def __call__(self) -> float:
        return time.perf_counter() - self._start


@dataclass(frozen=True)
class _Run:
    """What :func:`fit` sets up once and each of its steps uses."""

    task: TrainTask
    train: TrainConfig
    output: Path
    device: torch.device
    dist: Distributed
    model: nn.Module  # the training forward: the network, or its DDP wrapper; compiled with train.compile
    scaler: torch.amp.GradScaler
    use_amp: bool
    amp_dtype: torch.dtype
    writer: Any  # TensorBoard's SummaryWriter on rank 0, a _NoWriter on the others
    progress: bool  # show the progress bar (rank 0 only)
    budget: float | None  # seconds (train.minutes), or None
    clock: _Clock


@dataclass
class _Epoch:
    """What one training epoch did."""

    losses: list[float] = field(default_factory=list)  # of every step; empty: no step (the budget was used up)
    wait: float = 0.0  # seconds spent waiting for batches
    seconds: float = 0.0
    lr: float | None = None  # of its last step
    out_of_time: bool = False  # the time budget ran out during it


def fit(task: TrainTask, train: TrainConfig, output: Path, resumed: Checkpoint | None,
        device: torch.device, progress: bool = True, dist: Distributed | None = None) -> TrainResult:
    """Run the training loop of ``task`` into the run folder ``output``.

    Each epoch: :func:`_train_epoch`, then its history row (:func:`_epoch_row`), a validation when due
    (:func:`_validate`: ``best.pt``, patience), ``last.pt`` and ``history.csv`` (:func:`_record_epoch`), and the
    stopping rules (:func:`_stop_reason`).

    Args:
        task: network, optimizer, loss, data and validation of the task.
        train: the ``train`` section (schedule, budget, validation interval, patience, seed, AMP).
        output: run folder; ``checkpoints/``, ``history.csv``, ``training_curves.png``, ``tensorboard/``.
        resumed: the last checkpoint to resume from (from :func:`open_run`), or None.
        device: where the network is.
        progress: show a progress bar per epoch.
        dist: this process's place in a torchrun job (None: a single process).
    """
    dist = dist or Distributed()
    run, state = _set_up(task, train, output, resumed, device, progress, dist)
    start_epoch, stopped, validation_seconds = state.epoch, "max_epochs", 0.0
    while state.epoch < train.max_epochs:
        epoch = _train_epoch(run, state, validation_seconds)
        if epoch.out_of_time:
            stopped = "time budget"
        if not epoch.losses:  # the budget ran out before this epoch could start
            break
        state.epoch += 1
        row = _epoch_row(run, state, epoch)
        last_epoch = state.epoch >= train.max_epochs or epoch.out_of_time
        if task.validate is not None and (state.epoch % train.val_interval == 0 or last_epoch):
            validation_seconds = _validate(run, state, row)
        _record_epoch(run, state, row)
        reason = _stop_reason(train, state, epoch.out_of_time)
        if reason is not None:
            stopped = reason
            break
    if task.validate is None and state.epoch > start_epoch:
        _save(run, state, "best")  # nothing to select on: the last weights are the best we have
    run.writer.close()
    dist.barrier()  # every rank returns once rank 0 has written the last checkpoint
    seconds = run.clock()
    logger.info("training stopped (%s) after %d epochs, %d steps, %.0f s", stopped, state.epoch, state.step, seconds)
    return TrainResult(output, state.best.value, state.best.epoch, state.epoch, state.step, seconds, stopped,
                       state.epoch - start_epoch)


def _set_up(task: TrainTask, train: TrainConfig, output: Path, resumed: Checkpoint | None,
            device: torch.device, progress: bool, dist: Distributed) -> tuple[_Run, TrainState]:
    """Mixed precision and its loss scaler, the resumed weights and state, the training forward (DDP, compile),
    TensorBoard, and the clock (going on from the checkpoint's seconds)."""
    network = task.network
    if dist.is_main:
        (output / "checkpoints").mkdir(parents=True, exist_ok=True)
    use_amp = train.amp == "on" or (train.amp == "auto" and device.type == "cuda")
    amp_dtype = torch.bfloat16 if (device.type == "cpu" or torch.cuda.is_bf16_supported()) else torch.float16
    scaler = torch.amp.GradScaler(enabled=use_amp and amp_dtype == torch.float16)
    state = TrainState(best=Best(task.higher_is_better))
    if resumed is not None:
        network.load_state_dict(resumed.model)
        task.optimizer.load_state_dict(resumed.optimizer)
        if resumed.scaler is not None:
            scaler.load_state_dict(resumed.scaler)
        state = TrainState.from_checkpoint(resumed, read_history(output / "history.csv"), task.higher_is_better)
        logger.info("resuming %s at epoch %d (step %d, %.0f s used)", output, state.epoch, state.step, state.elapsed)
    model = _training_forward(network, train, device, dist)
    writer = summary_writer(output / "tensorboard") if dist.is_main else _NoWriter()
    budget = train.minutes * 60.0 if train.minutes else None
    run = _Run(task, train, output, device, dist, model, scaler, use_amp, amp_dtype, writer, progress and dist.is_main,
               budget, _Clock(state.elapsed))
    return run, state


def _training_forward(network: nn.Module, train: TrainConfig, device: torch.device, dist: Distributed) -> nn.Module:
    """The module the training steps run: ``network``, wrapped in DDP under torchrun, compiled with
    ``train.compile``. Called after the checkpoint is loaded: DDP broadcasts rank 0's weights once, here."""
    model = network
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":  # batch norm (model.norm: batch) over the global batch; in place on children
            nn.SyncBatchNorm.convert_sync_batchnorm(network)
        model = DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)
    if train.compile:  # the training forward only; checkpoints keep the plain network's parameter names
        model = torch.compile(model)
    return model


def _train_epoch(run: _Run, state: TrainState, validation_seconds: float) -> _Epoch:
    """The optimizer steps of epoch ``state.epoch`` (advancing ``state.step``), until ``steps_per_epoch`` or until
    the budget, keeping room for one more validation as long as the last, runs out (rank 0's clock rules)."""
    task, train, dist = run.task, run.train, run.dist
    seed = epoch_seed(train.seed, state.epoch)
    seed_everything(seed + 1_000_003 * dist.rank)  # ranks draw different dropout / crops, reproducibly
    batches = _cycle(task.loader(seed))
    task.network.train()
    total_steps = train.max_epochs * task.steps_per_epoch
    epoch, start = _Epoch(), time.perf_counter()
    bar = tqdm(range(task.steps_per_epoch), desc=f"epoch {state.epoch + 1}", unit="step", leave=False,
               disable=not run.progress, dynamic_ncols=True)
    for _ in bar:
        used = run.clock()
        if run.budget is not None and dist.enabled:  # rank 0's clock rules: same stop, same learning rate
            used, = dist.from_main(used)
        if run.budget is not None and used + validation_seconds * 1.1 >= run.budget:
            epoch.out_of_time = True
            break
        fetch = time.perf_counter()
        batch = next(batches)
        epoch.wait += time.perf_counter() - fetch
        progress_fraction = state.step / total_steps
        if run.budget is not None:
            progress_fraction = max(progress_fraction, used / run.budget)
        epoch.lr = learning_rate(train.lr, state.step, progress_fraction, train.warmup_steps, train.schedule)
        loss = _optimizer_step(run, batch, epoch.lr)
        state.step += 1
        epoch.losses.append(loss)
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{epoch.lr:.1e}")
        run.writer.add_scalar("train/loss", loss, state.step)
        run.writer.add_scalar("train/lr", epoch.lr, state.step)
    bar.close()
    epoch.seconds = time.perf_counter() - start
    return epoch


def _optimizer_step(run: _Run, batch: dict, lr: float) -> float:
    """One step at learning rate ``lr`` (forward in autocast, scaled backward); returns the loss."""
    optimizer = run.task.optimizer
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.use_amp):
        loss = run.task.loss(run.model, batch)
    optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(optimizer)
    run.scaler.update()
    return float(loss.detach())


def _epoch_row(run: _Run, state: TrainState, epoch: _Epoch) -> dict[str, Any]:
    """The epoch's ``history.csv`` row (loss averaged over ranks; the monitored column empty until validated) and
    its TensorBoard scalars."""
    epoch_loss = float(np.mean(epoch.losses))
    if run.dist.enabled:
        total = run.dist.sum(torch.tensor([epoch_loss], dtype=torch.float64, device=run.device))
        epoch_loss = float(total.item() / run.dist.world_size)
    row: dict[str, Any] = {"epoch": state.epoch, "step": state.step, "train_loss": epoch_loss, "lr": epoch.lr,
                           "epoch_seconds": round(epoch.seconds, 2),
                           "data_wait_fraction": round(epoch.wait / max(epoch.seconds, 1e-9), 4),
                           "elapsed_seconds": round(run.clock(), 1), run.task.metric: None}
    run.writer.add_scalar("train/epoch_loss", row["train_loss"], state.epoch)
    run.writer.add_scalar("time/data_wait_fraction", row["data_wait_fraction"], state.epoch)
    return row


def _validate(run: _Run, state: TrainState, row: dict[str, Any]) -> float:
    """Validate, fill ``row`` and TensorBoard, keep a better value (``best.pt``) or count a bad validation.
    Returns the seconds it took (the budget keeps room for the next one)."""
    task, dist = run.task, run.dist
    started = time.perf_counter()
    result = task.validate()
    seconds = time.perf_counter() - started
    if dist.enabled:  # every rank must take the same decisions (best, patience) from the same value
        result.metric, = dist.from_main(result.metric)
    row[task.metric] = result.metric
    row.update(result.row)
    for tag, value in result.scalars.items():
        run.writer.add_scalar(tag, value, state.epoch)
    for tag, picture in result.images.items():
        run.writer.add_image(tag, picture, state.epoch, dataformats="HWC")
    if state.best.update(result.metric, state.epoch):
        state.bad_validations = 0
        _save(run, state, "best")
    else:
        state.bad_validations += 1
    logger.info("epoch %d: loss %.4f, %s (best %.4f at epoch %d)", state.epoch, row["train_loss"], result.text,
                state.best.value, state.best.epoch)
    return seconds


def _record_epoch(run: _Run, state: TrainState, row: dict[str, Any]) -> None:
    """Add ``row`` to the history; write ``last.pt``, ``history.csv`` and its curves (rank 0); flush TensorBoard."""
    state.history.append(row)
    _save(run, state, "last")
    if run.dist.is_main:
        write_history(state.history, run.output, run.task.curves)
    run.writer.flush()


def _stop_reason(train: TrainConfig, state: TrainState, out_of_time: bool) -> str | None:
    """Why the run stops after this epoch (``early stopping``: ``train.patience`` validations without
    improvement; ``time budget``), or None to go on (up to ``max_epochs``)."""
    if train.patience is not None and state.bad_validations >= train.patience:
        return "early stopping"
    return "time budget" if out_of_time else None


def _save(run: _Run, state: TrainState, name: str) -> None:
    """``checkpoints/<name>.pt`` on rank 0: weights, optimizer, loss scaler, ``state`` (its seconds brought up to
    now), the task's payload, the world size and the versions."""
    state.elapsed = run.clock()
    if not run.dist.is_main:
        return
    save_checkpoint({
        "model": run.task.network.state_dict(), "optimizer": run.task.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(), **state.to_checkpoint(), **run.task.payload,
        "world_size": run.dist.world_size,
        "versions": {"medseg_attn": __version__, "torch": str(torch.__version__)},
    }, run.output / "checkpoints" / f"{name}.pt")
