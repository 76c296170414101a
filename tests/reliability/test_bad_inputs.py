"""Inputs that used to fail with library internals, vanish silently or slip into a spreadsheet as formulas."""

from __future__ import annotations

import csv
import os

import nibabel as nib
import numpy as np
import torch
from cli_helpers import assert_one_line_error, run
from reliability_helpers import digest, volume

from medseg_attn.classification.predictor import collect_images


def test_odd_cases_of_a_batch_are_named_in_failures_csv(tmp_path, segmentation_model):
    batch = tmp_path / "batch"
    batch.mkdir()
    volume(batch / "=cmd.nii.gz")  # a file name a spreadsheet would run as a formula
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.float32), np.eye(4)), str(batch / "zero.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((1, 1, 1), np.float32), np.eye(4)), str(batch / "one.nii.gz"))
    volume(batch / "far.nii.gz", spacing=(1e6, 1e6, 1e6))
    (batch / "gone.nii.gz").symlink_to(tmp_path / "missing.nii.gz")
    os.mkfifo(batch / "pipe.nii.gz")
    before = digest(batch)
    out = tmp_path / "out"
    result = run("-q", "predict", "--model", str(segmentation_model), "--input", str(batch), "--output", str(out))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    with (out / "failures.csv").open() as handle:
        errors = {row["case"]: row["error"] for row in csv.DictReader(handle)}
    assert set(errors) == {"zero", "one", "far", "gone", "pipe"}, errors
    assert errors["zero"].startswith(f"{batch / 'zero.nii.gz'}: every voxel is 0 (a blank image)")
    assert "fewer than two axes longer than one voxel" in errors["one"]
    assert "voxel spacing 1e+06 x 1e+06 x 1e+06 mm" in errors["far"]
    assert "dangling symbolic link" in errors["gone"] and "not a regular file" in errors["pipe"]
    for message in errors.values():
        assert "RuntimeError" not in message and "applying transform" not in message
    report = (out / "report.csv").read_text()
    assert "'=cmd" in report and "\n=cmd" not in report and ",=cmd" not in report
    assert (out / "=cmd.nii.gz").is_file()
    assert digest(batch) == before


def test_classification_names_what_it_skips(tmp_path, caplog):
    root = tmp_path / "images"
    root.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "a.png")
    (root / "b.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(root / "c.png")
    assert collect_images([root]) == [root / "a.png"]
    assert "b.png: dangling symbolic link" in caplog.text and "c.png: not a regular file" in caplog.text


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_malicious_checkpoint_is_refused_without_unsafe_advice(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, path)
    image = volume(tmp_path / "case.nii.gz")
    result = run("predict", "--model", str(path), "--input", str(image), "--output", str(tmp_path / "out"))
    assert_one_line_error(result, str(path), "refused", "posix.system")
    assert "weights_only" not in result.stderr and "pwned" not in result.stdout
