"""Real (short) training runs on the real brain MRI: the loss falls, runs resume exactly, budgets hold."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from medseg_attn.config import load_config
from medseg_attn.demo_data import build_demo_dataset
from medseg_attn.segmentation.workflows.train import learning_rate, train
from medseg_attn.training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def brain_dataset(tmp_path_factory):
    """Five real-brain training cases at 4 mm (39 x 48 x 40 voxels) and one held-out case."""
    root = tmp_path_factory.mktemp("brain")
    return build_demo_dataset(root, train_cases=5, test_cases=1, seed=3, train_spacing=4.0, test_spacing=3.0,
                              progress=False)


def _config(dataset, *extra):
    return load_config(overrides=[
        f"data.dataset={dataset}", "data.spacing=[4,4,4]", "data.patch_size=[32,32,32]", "data.samples_per_case=1",
        "data.validation_fraction=0.2", "model.channels=[8,16,32,64]", "train.steps_per_epoch=6",
        "train.batch_size=2", "train.val_interval=1", "train.lr=0.01", "train.warmup_steps=0",
        "data.augmentation.enabled=false", *extra])


def test_short_training_lowers_the_loss(brain_dataset, tmp_path):
    result = train(_config(brain_dataset, "train.max_epochs=4"), tmp_path / "run", progress=False)
    assert result.epochs == 4 and result.steps == 24 and result.stopped == "max_epochs"
    with (tmp_path / "run" / "history.csv").open() as handle:
        history = list(csv.DictReader(handle))
    losses = [float(row["train_loss"]) for row in history]
    assert losses[-1] < 0.85 * losses[0], losses
    assert float(history[-1]["val_dice"]) > 0.3  # grey/white matter already found after 24 steps at 4 mm
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["validation"]) == 1 and len(split["train"]) == 4
    assert not set(split["train"]) & set(split["validation"])
    for name in ("best", "last"):
        payload = load_checkpoint(tmp_path / "run" / "checkpoints" / f"{name}.pt")
        assert payload["labels"] == {0: "background", 1: "grey_matter", 2: "white_matter"}
        assert payload["config"]["data"]["spacing"] == [4.0, 4.0, 4.0]
        assert payload["preprocessing"]["intensity"] == "zscore"  # MR preset from dataset.json's modality
    assert (tmp_path / "run" / "training_curves.png").stat().st_size > 1000
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 1000
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert {"train/loss", "val/dice_mean", "val/dice_grey_matter"} <= set(accumulator.Tags()["scalars"])
    assert "val/overlay" in accumulator.Tags()["images"]
    # one attention picture per skip level that attends (3 skips for 4 levels of channels)
    assert {"val/attention_level0", "val/attention_level1", "val/attention_level2"} <= set(accumulator.Tags()["images"])


def test_resume_continues_exactly(brain_dataset, tmp_path):
    extra = ("train.schedule=constant", "train.val_interval=10")
    straight = train(_config(brain_dataset, "train.max_epochs=3", *extra), tmp_path / "straight", progress=False)
    first = train(_config(brain_dataset, "train.max_epochs=2", *extra), tmp_path / "resumed", progress=False)
    assert first.epochs == 2
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["epoch"] == 2
    resumed = train(_config(brain_dataset, "train.max_epochs=3", *extra), tmp_path / "resumed", resume=True,
                    progress=False)
    assert resumed.epochs == 3 and resumed.steps == straight.steps == 18
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=f"weights differ after resume: {key}")
    with (tmp_path / "resumed" / "history.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2", "3"]


def test_refuses_to_clobber_a_run_and_needs_a_run_to_resume(brain_dataset, tmp_path):
    train(_config(brain_dataset, "train.max_epochs=1"), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="already holds a training run"):
        train(_config(brain_dataset, "train.max_epochs=1"), tmp_path / "run", progress=False)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(_config(brain_dataset, "train.max_epochs=1"), tmp_path / "empty", resume=True, progress=False)


def test_time_budget_stops_and_saves(brain_dataset, tmp_path):
    result = train(_config(brain_dataset, "train.max_epochs=1000", "train.minutes=0.1"), tmp_path / "run",
                   progress=False)
    assert result.stopped == "time budget"
    assert result.seconds < 0.1 * 60 + 10  # the budget includes validation; a little slack for the last step
    assert (tmp_path / "run" / "checkpoints" / "best.pt").exists()


def test_learning_rate_schedule():
    assert learning_rate(1.0, 0, 0.0, 10, "cosine") == pytest.approx(0.1)  # warm-up
    assert learning_rate(1.0, 50, 0.5, 10, "cosine") == pytest.approx(0.5)
    assert learning_rate(1.0, 50, 1.0, 10, "cosine") == pytest.approx(1e-3)  # floor at the end
    assert learning_rate(1.0, 50, 0.5, 10, "poly") == pytest.approx(0.5**0.9)
    assert learning_rate(1.0, 50, 0.7, 10, "constant") == 1.0


def test_early_stopping(brain_dataset, tmp_path):
    # a learning rate too small to change anything: the second validation is no better, patience 1 stops it
    result = train(_config(brain_dataset, "train.max_epochs=10", "train.lr=1e-12", "train.patience=1"),
                   tmp_path / "run", progress=False)
    assert result.stopped == "early stopping" and result.epochs == 2 and result.best_epoch == 1


@pytest.mark.slow
def test_compiled_training_saves_the_plain_network(brain_dataset, tmp_path):
    """train.compile: the training forward runs through torch.compile; checkpoints keep plain parameter names."""
    result = train(_config(brain_dataset, "train.max_epochs=1", "train.compile=true"), tmp_path / "run",
                   progress=False)
    assert result.steps == 6
    payload = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert not any("_orig_mod" in key for key in payload["model"])
    from medseg_attn.segmentation.inference.predictor import Predictor

    Predictor.from_checkpoint(tmp_path / "run")  # loads into the plain network
