"""The state of a training run (counters, seconds used, best value, history) and where it is kept: the
checkpoint fields and ``history.csv``.

:class:`Best` is THE "is this value better" rule (strictly better: a tie is no improvement), used by
:func:`medseg_attn.training.loop.fit` for ``best.pt`` and early stopping and by the classification task for its
confusion-matrix picture. :class:`TrainState` is what :func:`fit` carries from epoch to epoch; its
:meth:`TrainState.to_checkpoint` fields are the checkpoint keys ``epoch``, ``step``, ``elapsed_seconds``,
``best_metric``, ``best_epoch``, ``bad_validations``, and :meth:`TrainState.from_checkpoint` reads them back
(every checkpoint written so far has them). :func:`write_history` / :func:`read_history` keep the history rows in
``history.csv``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg_attn.io.tables import write_csv

if TYPE_CHECKING:
    from medseg_attn.training.checkpoint import Checkpoint

__all__ = ["Best", "TrainState", "read_history", "write_history"]


@dataclass
class Best:
    """The best monitored value so far (None: nothing validated yet) and the epoch it came from."""

    higher_is_better: bool = True
    value: float | None = None
    epoch: int | None = None

    def improves(self, value: float) -> bool:
        """Whether ``value`` beats the best so far: strictly higher (or lower), or the first value at all."""
        if self.value is None:
            return True
        return value > self.value if self.higher_is_better else value < self.value

    def update(self, value: float, epoch: int | None = None) -> bool:
        """Keep ``value`` (and ``epoch``) when it improves on the best; returns whether it did."""
        if not self.improves(value):
            return False
        self.value, self.epoch = value, epoch
        return True


@dataclass
class TrainState:
    """What a run has done so far; mutable, :func:`medseg_attn.training.loop.fit` advances it.

    Attributes:
        epoch: epochs completed.
        step: optimizer steps taken.
        elapsed: wall-clock seconds used (validation included) at the last checkpoint or at resume.
        best: the best validation value, its epoch and its direction.
        bad_validations: validations in a row without improvement (early stopping counts these).
        history: the ``history.csv`` rows so far, one per epoch.
    """

    epoch: int = 0
    step: int = 0
    elapsed: float = 0.0
    best: Best = field(default_factory=Best)
    bad_validations: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, history: list[dict[str, Any]],
                        higher_is_better: bool = True) -> TrainState:
        """The state a checkpoint was written in, with the run's ``history`` rows (from ``history.csv``)."""
        return cls(epoch=checkpoint.epoch, step=checkpoint.step, elapsed=checkpoint.elapsed_seconds,
                   best=Best(higher_is_better, checkpoint.best_metric, checkpoint.best_epoch),
                   bad_validations=checkpoint.bad_validations, history=history)

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint fields of this state (the keys :meth:`from_checkpoint` reads)."""
        return {"epoch": self.epoch, "step": self.step, "elapsed_seconds": self.elapsed,
                "best_metric": self.best.value, "best_epoch": self.best.epoch,
                "bad_validations": self.bad_validations}


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
