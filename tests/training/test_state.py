"""The training state: its checkpoint fields, the best-value rule, and fit's use of both."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from medseg_attn.config import TrainConfig
from medseg_attn.training.checkpoint import load_checkpoint, save_checkpoint
from medseg_attn.training.loop import TrainTask, Validation, fit
from medseg_attn.training.state import Best, TrainState

CHECKPOINT_FIELDS = ["epoch", "step", "elapsed_seconds", "best_metric", "best_epoch", "bad_validations"]


def test_state_round_trips_through_a_checkpoint(tmp_path):
    history = [{"epoch": 1, "step": 4, "train_loss": 0.5}, {"epoch": 2, "step": 8, "train_loss": 0.25}]
    state = TrainState(epoch=2, step=8, elapsed=12.5, best=Best(False, 0.25, 2), bad_validations=1, history=history)
    fields = state.to_checkpoint()
    assert list(fields) == CHECKPOINT_FIELDS  # the keys (and their order) of every checkpoint so far
    assert fields == {"epoch": 2, "step": 8, "elapsed_seconds": 12.5, "best_metric": 0.25, "best_epoch": 2,
                      "bad_validations": 1}
    payload = load_checkpoint(save_checkpoint({"model": {}, **fields}, tmp_path / "last.pt"))
    again = TrainState.from_checkpoint(payload, history, higher_is_better=False)
    assert again == state
    assert not again.best.improves(0.25) and again.best.improves(0.2)  # the direction came back too


def test_state_reads_a_checkpoint_written_before_the_state_type(tmp_path):
    # what fit saved before TrainState: the counters as loose keys among the rest, no best value yet
    old = {"model": {}, "optimizer": {}, "epoch": 3, "step": 30, "elapsed_seconds": 61.0, "best_metric": None,
           "best_epoch": None, "bad_validations": 0, "config": {}, "world_size": 1}
    state = TrainState.from_checkpoint(load_checkpoint(save_checkpoint(old, tmp_path / "old.pt")), [])
    assert (state.epoch, state.step, state.elapsed, state.bad_validations) == (3, 30, 61.0, 0)
    assert state.best == Best(True, None, None) and state.best.improves(-1e9)


@pytest.mark.parametrize("higher, better, worse", [(True, 0.6, 0.4), (False, 0.4, 0.6)])
def test_best_keeps_strictly_better_values_only(higher, better, worse):
    best = Best(higher)
    assert best.improves(0.5) and best.update(0.5, 1)  # the first value always counts
    assert (best.value, best.epoch) == (0.5, 1)
    assert not best.improves(0.5) and not best.update(0.5, 2)  # a tie is no improvement
    assert not best.update(worse, 3)
    assert (best.value, best.epoch) == (0.5, 1)
    assert best.update(better, 4)
    assert (best.value, best.epoch) == (better, 4)


def _task(metrics: list[float], higher_is_better: bool) -> TrainTask:
    torch.manual_seed(0)
    network = nn.Linear(3, 1)
    batch = {"x": torch.ones(2, 3)}
    left = list(metrics)
    return TrainTask(network=network, optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
                     loss=lambda model, b: model(b["x"]).pow(2).mean(), loader=lambda seed: [batch],
                     steps_per_epoch=1, validate=lambda: Validation(metric=left.pop(0)), metric="val_score",
                     payload={"config": {}}, curves=None, higher_is_better=higher_is_better)


@pytest.mark.parametrize("higher, metrics", [(True, [0.5, 0.7, 0.7, 0.6, 0.9]), (False, [0.5, 0.3, 0.3, 0.4, 0.1])])
def test_fit_keeps_the_first_of_tied_values_and_counts_ties_towards_patience(tmp_path, higher, metrics):
    train = TrainConfig(max_epochs=5, steps_per_epoch=1, val_interval=1, patience=2, warmup_steps=0, amp="off",
                        device="cpu", log_images=False)
    result = fit(_task(metrics, higher), train, tmp_path, None, torch.device("cpu"), progress=False)
    # epoch 2 set the best; the tie at 3 and the worse value at 4 are two bad validations: stop before epoch 5
    assert (result.best_metric, result.best_epoch, result.epochs, result.stopped) == (metrics[1], 2, 4,
                                                                                     "early stopping")
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert [key for key in last if key in CHECKPOINT_FIELDS] == CHECKPOINT_FIELDS
    assert (last["best_metric"], last["best_epoch"], last["bad_validations"], last["epoch"]) == (metrics[1], 2, 2, 4)
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["epoch"] == 2


def test_fit_resumes_the_state_of_its_checkpoint(tmp_path):
    metrics = [0.5, 0.7, 0.6, 0.6, 0.8]
    train = TrainConfig(max_epochs=2, steps_per_epoch=1, val_interval=1, patience=3, warmup_steps=0,
                        schedule="constant", amp="off", device="cpu", log_images=False)
    fit(_task(metrics, True), train, tmp_path, None, torch.device("cpu"), progress=False)
    payload = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    more = replace(train, max_epochs=4)
    result = fit(_task(metrics[2:], True), more, tmp_path, payload, torch.device("cpu"), progress=False)
    # the resumed run kept best 0.7 at epoch 2: 0.6 twice are two bad validations, not a new best
    assert (result.best_metric, result.best_epoch, result.epochs, result.steps, result.epochs_run) == (0.7, 2, 4, 4, 2)
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert (last["bad_validations"], last["best_epoch"]) == (2, 2)
