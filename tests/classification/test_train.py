"""Classification engine: metrics against hand computation, real short trainings, resume, checkpoints, predictions."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medseg_attn.classification.metrics import binary_auc, classification_metrics, confusion_matrix
from medseg_attn.classification.predictor import Classifier, evaluate_classifier, predict_images
from medseg_attn.classification.train import balanced_sampler, class_weights, train_classifier
from medseg_attn.config import ClassifyConfig, load_config
from medseg_attn.training.checkpoint import load_checkpoint

CLASSES = ("checker", "horizontal", "vertical")


def pattern_image(rng: np.random.Generator, label: int, size: int = 32) -> np.ndarray:
    """16-bit noise over a faint stripe pattern whose orientation is the class (random period and phase)."""
    rows, cols = np.indices((size, size))
    period = rng.uniform(5, 8)
    phase = rng.uniform(0, 2 * np.pi, 2)
    horizontal = np.sin(2 * np.pi * rows / period + phase[0])
    vertical = np.sin(2 * np.pi * cols / period + phase[1])
    pattern = (horizontal * vertical, horizontal, vertical)[label]
    image = rng.normal(20000, 3000, (size, size)) + 4000 * pattern
    return np.clip(image, 0, 65535).astype(np.uint16)


def write_folder(root: Path, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(pattern_image(rng, label)).save(root / name / f"{name}_{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def patterns(tmp_path_factory) -> Path:
    """train/ (24 per class) and test/ (10 per class, other random draws): a learnable signal, 16-bit grayscale."""
    root = tmp_path_factory.mktemp("patterns")
    write_folder(root / "train", 24, seed=0)
    write_folder(root / "test", 10, seed=1)
    return root


def config(data: Path, *extra: str) -> ClassifyConfig:
    return load_config(overrides=[f"data.train={data}", "model.channels=[8,16,32]", "train.batch_size=12",
                                  "train.lr=0.003", "train.warmup_steps=0", "data.augmentation.enabled=false",
                                  *extra], kind=ClassifyConfig)


def test_metrics_match_hand_computation():
    truth = np.array([0, 0, 0, 1, 1, 2])
    probabilities = np.array([
        [0.7, 0.2, 0.1],  # 0 -> 0
        [0.5, 0.4, 0.1],  # 0 -> 0
        [0.2, 0.7, 0.1],  # 0 -> 1
        [0.1, 0.8, 0.1],  # 1 -> 1
        [0.6, 0.3, 0.1],  # 1 -> 0
        [0.1, 0.1, 0.8],  # 2 -> 2
    ])
    metrics = classification_metrics(truth, probabilities, ["a", "b", "c"])
    assert metrics["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # recalls: a 2/3, b 1/2, c 1; precisions: a 2/3, b 1/2, c 1
    assert metrics["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    f1 = {"a": 2 / 3, "b": 1 / 2, "c": 1.0}  # precision = recall, so F1 = recall
    for name, value in f1.items():
        assert metrics["per_class"][name]["f1"] == pytest.approx(value)
    assert metrics["macro_f1"] == pytest.approx(sum(f1.values()) / 3)
    # AUC of 'a': positives score (0.7, 0.5, 0.2), negatives (0.1, 0.6, 0.1): pairs won 3 + 2 + 2 = 7 of 9
    assert metrics["per_class"]["a"]["auc"] == pytest.approx(7 / 9)
    # 'b': positives (0.8, 0.3) vs negatives (0.2, 0.4, 0.7, 0.1): 4 + 2 = 6 of 8
    assert metrics["per_class"]["b"]["auc"] == pytest.approx(6 / 8)
    assert metrics["per_class"]["c"]["auc"] == pytest.approx(1.0)
    assert metrics["auc"] == pytest.approx((7 / 9 + 6 / 8 + 1) / 3)
    expected_loss = -np.mean(np.log([0.7, 0.5, 0.2, 0.8, 0.3, 0.8]))
    assert metrics["loss"] == pytest.approx(expected_loss)


def test_metric_edge_cases():
    assert binary_auc(np.array([0.5, 0.5, 0.5]), np.array([True, False, False])) == pytest.approx(0.5)  # ties
    assert math.isnan(binary_auc(np.array([0.1, 0.2]), np.array([True, True])))
    # class 'c' never occurs and is never predicted: no recall, no F1 contribution, AUC undefined
    metrics = classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]]), ["a", "b", "c"])
    assert metrics["balanced_accuracy"] == 1.0 and metrics["macro_f1"] == 1.0 and metrics["auc"] == 1.0
    assert math.isnan(metrics["per_class"]["c"]["auc"]) and metrics["per_class"]["c"]["precision"] == 0.0
    # always predicting the majority class: accuracy 0.8 but balanced accuracy 1/2
    metrics = classification_metrics(np.array([0, 0, 0, 0, 1]), np.tile([0.9, 0.1], (5, 1)), ["a", "b"])
    assert metrics["accuracy"] == pytest.approx(0.8) and metrics["balanced_accuracy"] == pytest.approx(0.5)
    np.testing.assert_array_equal(confusion_matrix(np.array([1, 1]), np.array([0, 1]), 2), [[0, 0], [1, 1]])


def test_short_training_learns_and_predicts_held_out_images(patterns, tmp_path):
    result = train_classifier(config(patterns / "train", "train.max_epochs=6", "model.pooling=attention"),
                              tmp_path / "run", progress=False)
    assert result.epochs == 6 and result.stopped == "max_epochs"
    run = tmp_path / "run"
    split = json.loads((run / "split.json").read_text())
    assert len(split["validation"]) == 15 and not set(split["train"]) & set(split["validation"])  # 5 per class
    classifier = Classifier.from_checkpoint(run)
    metrics = evaluate_classifier(patterns / "test", tmp_path / "evaluation", classifier=classifier)
    assert metrics["images"] == 30 and metrics["accuracy"] >= 0.8, metrics  # chance is 1/3
    for name in ("metrics.json", "per_class.csv", "confusion_matrix.csv", "confusion_matrix.png", "predictions.csv"):
        assert (tmp_path / "evaluation" / name).stat().st_size > 50
    with (tmp_path / "evaluation" / "confusion_matrix.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["true \\ predicted", *CLASSES]
    assert [sum(int(v) for v in row[1:]) for row in rows[1:]] == [10, 10, 10]

    files = sorted((patterns / "test").rglob("*.png"))[::4]
    rows = predict_images(classifier, files, tmp_path / "predictions.csv")
    with (tmp_path / "predictions.csv").open() as handle:
        written = list(csv.DictReader(handle))
    assert [row["file"] for row in written] == [str(f) for f in files]  # one row per file, in order
    assert list(written[0]) == ["file", "class_name", "class_index", *(f"probability_{c}" for c in CLASSES)]
    for row in written:
        probabilities = [float(row[f"probability_{c}"]) for c in CLASSES]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
        assert CLASSES[int(row["class_index"])] == row["class_name"]
        assert int(row["class_index"]) == int(np.argmax(probabilities))
    assert sum(row["class_name"] == Path(row["file"]).parent.name for row in written) >= 0.8 * len(written)
    # a predictions CSV scores the same as the model
    again = evaluate_classifier(patterns / "test", tmp_path / "again", predictions=tmp_path / "evaluation" /
                                "predictions.csv", classes=list(CLASSES))
    assert again["accuracy"] == metrics["accuracy"]


def test_checkpoint_history_and_logs(patterns, tmp_path):
    train_classifier(config(patterns / "train", "train.max_epochs=2", "data.augmentation.enabled=true",
                            "train.balance=sampler"), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    payload = load_checkpoint(run / "checkpoints" / "best.pt")  # weights_only=True
    assert payload["task"] == "classification" and payload["classes"] == list(CLASSES)
    assert payload["labels"] == {0: "checker", 1: "horizontal", 2: "vertical"}
    assert payload["preprocessing"]["image_size"] == [32, 32] and payload["in_channels"] == 1
    assert payload["config"]["data"]["train"] == str((patterns / "train").resolve())
    with (run / "history.csv").open() as handle:
        history = list(csv.DictReader(handle))
    assert len(history) == 2
    for key in ("train_loss", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1", "val_auc"):
        assert history[-1][key] != "", key
    for name in ("training_curves.png", "confusion_matrix.png", "config.yaml"):
        assert (run / name).stat().st_size > 100
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"train/loss", "val/accuracy", "val/balanced_accuracy", "val/auc"} <= set(events.Tags()["scalars"])
    assert "val/confusion_matrix" in events.Tags()["images"]
    with pytest.raises(ValueError, match="already holds a training run"):
        train_classifier(config(patterns / "train", "train.max_epochs=2"), run, progress=False)


def test_resume_continues_exactly(patterns, tmp_path):
    extra = ("train.schedule=constant", "data.augmentation.enabled=true", "data.augmentation.affine_probability=1")
    train_classifier(config(patterns / "train", "train.max_epochs=2", *extra), tmp_path / "straight", progress=False)
    train_classifier(config(patterns / "train", "train.max_epochs=1", *extra), tmp_path / "resumed", progress=False)
    train_classifier(config(patterns / "train", "train.max_epochs=2", *extra), tmp_path / "resumed", resume=True,
                     progress=False)
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], msg=f"weights differ after resume: {key}")
    with pytest.raises(ValueError, match=r"model section differs .* in model.attention=True \(this config False\)"):
        train_classifier(config(patterns / "train", "train.max_epochs=3", "model.attention=false", *extra),
                         tmp_path / "resumed", resume=True, progress=False)


def test_class_balance_helpers():
    counts = np.array([8, 2])
    torch.testing.assert_close(class_weights(counts), torch.tensor([10 / 16, 10 / 4]))
    labels = [0] * 8 + [1] * 2
    sampler = balanced_sampler(labels, counts, torch.Generator().manual_seed(0))
    drawn = np.array([labels[i] for _ in range(200) for i in sampler])
    assert len(drawn) == 2000 and abs(drawn.mean() - 0.5) < 0.05  # each class half the time


def test_3d_volumes_and_multitask(tmp_path):
    rng = np.random.default_rng(0)
    grid = np.indices((12, 12, 12))
    rows = ["path,label,mask"]
    for name in ("ball", "box"):
        (tmp_path / name).mkdir()
        for i in range(4):
            centre = rng.uniform(5, 7, 3)[:, None, None, None]
            inside = (np.abs(grid - centre).max(0) < 3) if name == "box" else (((grid - centre) ** 2).sum(0) < 9)
            volume = (inside * 100 + rng.normal(0, 10, inside.shape)).astype(np.float32)
            nib.save(nib.Nifti1Image(volume, np.eye(4)), str(tmp_path / name / f"{i}.nii.gz"))
            nib.save(nib.Nifti1Image(inside.astype(np.uint8), np.eye(4)), str(tmp_path / name / f"{i}_mask.nii.gz"))
            rows.append(f"{name}/{i}.nii.gz,{name},{name}/{i}_mask.nii.gz")
    listing = tmp_path / "list.csv"
    listing.write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match="needs a label map per image"):  # an ImageFolder has no masks
        train_classifier(config(tmp_path, "model.multitask=true"), tmp_path / "x", progress=False)
    result = train_classifier(config(listing, "train.max_epochs=1", "model.multitask=true", "train.batch_size=2",
                                     "data.validation_fraction=0.25"), tmp_path / "run", progress=False)
    assert result.epochs == 1
    payload = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert payload["segmentation_classes"] == 2 and payload["preprocessing"]["spatial_dims"] == 3
    classifier = Classifier.from_checkpoint(tmp_path / "run")
    assert classifier.probabilities([tmp_path / "box" / "0.nii.gz"]).shape == (1, 2)


def test_bad_training_folders(tmp_path):
    write_folder(tmp_path / "mixed", 2, seed=0)
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "mixed" / "checker" / "odd.png")
    with pytest.raises(ValueError, match=r"image size (20x30|32x32) differs from (32x32|20x30).*set data.image_size"
                       ) as error:
        train_classifier(config(tmp_path / "mixed", "data.image_size=null"), tmp_path / "r1", progress=False)
    assert "odd.png" in str(error.value)
    with pytest.raises(ValueError, match="bottleneck"):
        train_classifier(config(tmp_path / "mixed", "data.image_size=[4,4]"), tmp_path / "r2", progress=False)
    with pytest.raises(ValueError, match="no training images given"):
        train_classifier(load_config(kind=ClassifyConfig), tmp_path / "r3", progress=False)
