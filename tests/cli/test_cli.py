"""The command line as users run it (``main(argv)`` in process, the console script once): real files, one-line
errors and exit codes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg_attn.demo_data import build_demo_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_helpers import assert_one_line_error, run  # noqa: E402


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    return build_demo_dataset(root / "data", train_cases=3, test_cases=2, seed=5, train_spacing=4.0,
                              test_spacing=2.0, progress=False)


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "medseg-attn"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("medseg-attn ")


def test_help_lists_commands_and_each_has_help():
    result = run("--help")
    assert result.returncode == 0
    for command in ("train", "predict", "evaluate", "demo"):
        assert command in result.stdout
        sub = run(command, "--help")
        assert sub.returncode == 0 and "--output" in sub.stdout and "examples:" in sub.stdout


def test_user_errors_are_one_line(tmp_path, dataset):
    assert_one_line_error(run("train", "--data", str(tmp_path / "missing"), "--output", str(tmp_path / "r")),
                          "missing", "dataset not found")
    config = tmp_path / "typo.yaml"
    config.write_text("train:\n  max_epoch: 3\n")
    assert_one_line_error(run("train", "--config", str(config), "--data", str(dataset), "--output",
                              str(tmp_path / "r")), "typo.yaml", "did you mean 'train.max_epochs'")
    assert_one_line_error(run("predict", "--model", str(tmp_path / "norun"), "--input",
                              str(dataset.parent / "imagesTs"), "--output", str(tmp_path / "p")),
                          "norun", "model not found")
    assert_one_line_error(run("evaluate", "--pred", str(tmp_path / "nopred"), "--label", str(tmp_path),
                              "--output", str(tmp_path / "e")), "nopred")


def test_label_image_mismatch_is_one_line(tmp_path, dataset):
    spec = json.loads(dataset.read_text())
    label = dataset.parent / spec["training"][0]["label"]
    broken = tmp_path / "data"
    import shutil

    shutil.copytree(dataset.parent, broken)
    image = nib.load(str(label))
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:-2], image.affine), str(broken / spec["training"][0]["label"]))
    assert_one_line_error(run("train", "--data", str(broken), "--output", str(tmp_path / "r")),
                          spec["training"][0]["label"][2:], "does not match image")
    nib.save(nib.Nifti1Image(np.full(image.shape, 7, np.uint8), image.affine),
             str(broken / spec["training"][0]["label"]))
    result = run("train", "--data", str(broken), "--output", str(tmp_path / "r2"), "--epochs", "1",
                 "--set", "data.spacing=[4,4,4]", "--set", "data.patch_size=[16,16,16]",
                 "--set", "model.channels=[8,16,32]")
    assert_one_line_error(result, "label values [7]", "outside the dataset's classes")


def test_train_predict_evaluate_end_to_end(tmp_path, dataset):
    run_dir = tmp_path / "run"
    result = run("-q", "train", "--data", str(dataset), "--output", str(run_dir), "--epochs", "2",
                 "--set", "data.patch_size=[32,32,32]", "--set", "model.channels=[8,16,32]",
                 "--set", "train.steps_per_epoch=3", "--set", "train.val_interval=1")
    assert result.returncode == 0, result.stderr
    assert "trained 2 epochs" in result.stdout
    assert (run_dir / "checkpoints" / "best.pt").exists() and (run_dir / "config.yaml").exists()

    images = dataset.parent / "imagesTs"
    result = run("-q", "predict", "--model", str(run_dir), "--input", str(images), "--output", str(tmp_path / "pred"))
    assert result.returncode == 0, result.stderr
    for source in sorted(images.iterdir()):
        output = nib.load(str(tmp_path / "pred" / source.name))
        reference = nib.load(str(source))
        assert output.shape == reference.shape
        np.testing.assert_array_equal(output.affine, reference.affine)
        assert set(np.unique(np.asarray(output.dataobj))) <= {0, 1, 2}

    result = run("-q", "evaluate", "--pred", str(tmp_path / "pred"), "--label", str(dataset.parent / "labelsTs"),
                 "--output", str(tmp_path / "eval"), "--labels", str(dataset))
    assert result.returncode == 0, result.stderr
    with (tmp_path / "eval" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 2  # two cases x (grey matter, white matter)
    assert {row["class_name"] for row in rows} == {"grey_matter", "white_matter"}
    # six steps of training reach Dice 0.37 (GM) / 0.22 (WM) here; an all-background prediction scores 0
    assert all(float(row["dice"]) > 0.1 for row in rows), rows
    assert (tmp_path / "eval" / "dice_boxplot.png").stat().st_size > 1000

    # refuse to write into the input folder
    assert_one_line_error(run("predict", "--model", str(run_dir), "--input", str(images), "--output", str(images)),
                          "choose another --output")
