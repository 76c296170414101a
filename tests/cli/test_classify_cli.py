"""``medseg-attn classify`` as users run it: real subprocesses on real PNG / NIfTI folders, one-line errors."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_helpers import assert_one_line_error, run  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SMALL = ("--set", "model.channels=[8,16,32]", "--set", "train.batch_size=16")


def rgb_folder(root: Path, classes: int = 10, per_class: int = 6, size: int = 64) -> Path:
    """``classes`` classes of RGB PNGs; the class is the colour of a square (a learnable signal)."""
    rng = np.random.default_rng(0)
    palette = rng.integers(60, 255, (classes, 3))
    for k in range(classes):
        (root / f"class_{k}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
            image[16:48, 16:48] = palette[k]
            Image.fromarray(image).save(root / f"class_{k}" / f"{i}.png")
    return root


def test_help_lists_the_classify_commands():
    result = run("classify", "--help")
    assert result.returncode == 0
    for command in ("train", "predict", "evaluate", "demo"):
        assert command in result.stdout
        sub = run("classify", command, "--help")
        assert sub.returncode == 0 and "--output" in sub.stdout and "examples:" in sub.stdout


def test_rgb_10_classes_train_resume_predict_evaluate(tmp_path):
    data = rgb_folder(tmp_path / "images")
    (data / ".DS_Store").write_text("x")
    run_dir = tmp_path / "run"
    result = run("-q", "classify", "train", "--data", str(data), "--output", str(run_dir), "--epochs", "1", *SMALL)
    assert result.returncode == 0, result.stderr
    assert "trained 1 epochs" in result.stdout and "best validation balanced accuracy" in result.stdout
    assert "skipped 1 hidden" in result.stderr  # warnings still show with -q
    result = run("-q", "classify", "train", "--output", str(run_dir), "--resume", "--epochs", "2")
    assert result.returncode == 0 and "trained 2 epochs" in result.stdout, result.stderr

    predictions = tmp_path / "predictions.csv"
    inputs = [str(data / "class_3"), str(data / "class_7" / "0.png")]
    result = run("-q", "classify", "predict", "--model", str(run_dir), "--input", *inputs, "--output",
                 str(predictions))
    assert result.returncode == 0 and "classified 7 image(s)" in result.stdout, result.stderr
    with predictions.open() as handle:
        rows = list(csv.DictReader(handle))
    expected = [str(p) for p in sorted((data / "class_3").glob("*.png"))] + [str(data / "class_7" / "0.png")]
    assert [row["file"] for row in rows] == expected
    assert len(rows[0]) == 3 + 10 and all(row["class_name"] == f"class_{row['class_index']}" for row in rows)

    result = run("-q", "classify", "evaluate", "--model", str(run_dir), "--data", str(data), "--output",
                 str(tmp_path / "evaluation"))
    assert result.returncode == 0 and "60 image(s): accuracy" in result.stdout, result.stderr
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert metrics["images"] == 60 and len(metrics["per_class"]) == 10
    assert (tmp_path / "evaluation" / "confusion_matrix.png").stat().st_size > 1000
    result = run("-q", "classify", "evaluate", "--predictions", str(tmp_path / "evaluation" / "predictions.csv"),
                 "--data", str(data), "--output", str(tmp_path / "again"))
    assert result.returncode == 0 and f"accuracy {metrics['accuracy']:.4f}" in result.stdout, result.stderr


def test_grayscale_16_bit_pngs_and_3d_volumes(tmp_path):
    rng = np.random.default_rng(0)
    for k, name in enumerate(("dark", "bright")):
        (tmp_path / "gray" / name).mkdir(parents=True)
        (tmp_path / "volumes" / name).mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 20000, (40, 48)) + 30000 * k
            Image.fromarray(pixels.astype(np.uint16)).save(tmp_path / "gray" / name / f"{i}.png")
            volume = rng.normal(100 * k, 20, (14, 12, 10)).astype(np.int16)
            nib.save(nib.Nifti1Image(volume, np.diag([1.5, 1.5, 3.0, 1.0])),
                     str(tmp_path / "volumes" / name / f"{i}.nii.gz"))
    result = run("-q", "classify", "train", "--data", str(tmp_path / "gray"), "--output", str(tmp_path / "run2d"),
                 "--epochs", "1", "--set", "data.intensity=scale", *SMALL)
    assert result.returncode == 0, result.stderr
    result = run("-q", "classify", "train", "--config", str(REPO / "configs" / "classify_3d.yaml"), "--data",
                 str(tmp_path / "volumes"), "--output", str(tmp_path / "run3d"), "--epochs", "1", "--set",
                 "data.image_size=[16,16,16]", "--set", "model.channels=[8,16,32]", "--set", "model.head_dim=8")
    assert result.returncode == 0, result.stderr
    result = run("-q", "classify", "predict", "--model", str(tmp_path / "run3d"), "--input",
                 str(tmp_path / "volumes"), "--output", str(tmp_path / "volumes.csv"))
    assert result.returncode == 0 and "classified 10 image(s)" in result.stdout, result.stderr


def test_bad_folders_are_one_line_errors(tmp_path):
    data = rgb_folder(tmp_path / "images", classes=2, per_class=2, size=16)
    (data / "class_9").mkdir()
    assert_one_line_error(run("classify", "train", "--data", str(data), "--output", str(tmp_path / "r")),
                          "class_9", "holds no images")
    (data / "class_9").rmdir()
    (data / "class_1" / "broken.png").write_text("not an image")
    assert_one_line_error(run("classify", "train", "--data", str(data), "--output", str(tmp_path / "r")),
                          "broken.png", "not a readable image")
    (data / "class_1" / "broken.png").unlink()
    Image.fromarray(np.zeros((20, 16, 3), np.uint8)).save(data / "class_0" / "tall.png")
    assert_one_line_error(run("classify", "train", "--data", str(data), "--output", str(tmp_path / "r")),
                          "differs from", "set data.image_size", "tall.png")
    assert_one_line_error(run("classify", "predict", "--model", str(tmp_path / "norun"), "--input", str(data),
                              "--output", str(tmp_path / "p.csv")), "norun", "model not found")


@pytest.mark.slow
def test_demo_compares_attention_with_its_baseline(tmp_path):
    result = run("-q", "classify", "demo", "--output", str(tmp_path / "demo"), "--minutes", "0.3", "--baseline")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert set(summary) == {"attention", "_baseline"}
    assert summary["attention"]["accuracy"] > 0.3  # ten classes: chance is 0.1
    assert "| attention head |" in (tmp_path / "demo" / "summary.md").read_text()
