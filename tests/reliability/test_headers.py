"""Issue 26: one NIfTI header rule (the sform when its code is above 0, as nibabel) for every reader, writer and
statistic, a warning when sform and qform disagree; a batch too small for the outlier checks says so."""

from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
from reliability_helpers import cli, volume

from medseg_attn.io.readers import LoadVolumed
from medseg_attn.io.volumes import read_geometry


def mismatched(path, shape=(20, 22, 16)):
    """A NIfTI whose sform (code 2) says 3 mm voxels and whose qform (code 1) says 1.5 mm."""
    data = np.random.default_rng(0).normal(100, 30, shape).astype(np.float32)
    image = nib.Nifti1Image(data, None)
    image.header.set_sform(np.diag([-3.0, -3.0, 3.0, 1.0]), code=2)
    image.header.set_qform(np.diag([-1.5, -1.5, 1.5, 1.0]), code=1)
    nib.save(image, str(path))
    return path


def test_every_reader_follows_the_sform_and_warns(tmp_path, caplog):
    path = mismatched(tmp_path / "mixed.nii.gz")
    expected = nib.load(str(path)).affine
    with caplog.at_level(logging.WARNING):
        geometry = read_geometry(path)
        loaded = LoadVolumed("image")({"image": str(path)})["image"]
    assert np.allclose(geometry.affine, expected) and geometry.spacing == (3.0, 3.0, 3.0)
    assert np.allclose(np.asarray(loaded.affine), expected) and np.allclose(np.asarray(loaded.pixdim), 3.0)
    disagree = "sform (code 2) and qform (code 1) disagree"
    warnings = [r.getMessage() for r in caplog.records if disagree in r.getMessage()]
    assert len(warnings) == 1 and "mixed.nii.gz" in warnings[0] and "using the sform" in warnings[0]


def test_statistics_and_outputs_agree_with_nibabel(capsys, tmp_path, segmentation_model):
    inputs = tmp_path / "in"
    inputs.mkdir()
    path = mismatched(inputs / "mixed.nii.gz")
    result = cli(capsys, "-q", "predict", "--model", str(segmentation_model), "--input", str(path), "--output",
                 str(tmp_path / "out"), "--statistics")
    assert result.returncode == 0, result.stderr
    output = nib.load(str(tmp_path / "out" / "mixed.nii.gz"))
    assert np.allclose(output.affine, nib.load(str(path)).affine)
    labels = np.asanyarray(output.dataobj)
    voxel_ml = abs(np.linalg.det(output.affine[:3, :3])) / 1000.0
    record = json.loads((tmp_path / "out" / "mixed_statistics.json").read_text())
    assert record["structures"]
    for row in record["structures"]:
        truth = float((labels == row["label"]).sum()) * voxel_ml
        assert abs(row["volume_ml"] - truth) <= 1e-3 * max(truth, 1e-9) + 1e-6, (row, truth)


def test_a_small_batch_says_which_checks_did_not_run(capsys, tmp_path, segmentation_model):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for seed in range(3):
        volume(inputs / f"case{seed}.nii.gz", seed=seed)
    result = cli(capsys, "-q", "predict", "--model", str(segmentation_model), "--input", str(inputs), "--output",
                 str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Not run: the batch comparisons (volume, uncertainty and intensity outliers) need at least 5" in report
    assert "this batch has 3" in report and "min_batch_cases" in report
