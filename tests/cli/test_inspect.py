"""``medseg-attn inspect``: what the reader sees, as a user runs it."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_helpers import run  # noqa: E402
from dicom_factory import write_series  # noqa: E402


def test_inspect_real_dicom_series_and_reference_labels(ct_dir):
    result = run("inspect", str(ct_dir / "dicom"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "DICOM series found: 1" in out and "'CT Body 3.0', modality CT" in out
    assert "20 slice(s) of 512x512, slice step 2 mm" in out
    assert "blank StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID" in out
    assert "shape: (512, 512, 20)" in out and "orientation: LPS" in out
    assert "intensity: min -1024, max 1839" in out and "0 NaN, 0 Inf" in out
    labels = run("inspect", str(ct_dir / "example_seg_dicom.nii.gz"))
    assert labels.returncode == 0 and "orientation: LAS" in labels.stdout
    assert "label values (value: voxels): 0: 4503460, 1: 130634, 5: 366708" in labels.stdout


def test_inspect_folder_with_two_series_and_problems(tmp_path):
    volume = np.arange(8 * 8 * 8, dtype=float).reshape(8, 8, 8)
    write_series(tmp_path / "mixed", volume, description="arterial")
    write_series(tmp_path / "mixed", volume, names=[f"b{k}.dcm" for k in range(8)], description="venous", skip=[4])
    result = run("inspect", str(tmp_path / "mixed"))
    assert result.returncode == 0, result.stderr
    assert "DICOM series found: 2" in result.stdout
    assert "'arterial'" in result.stdout and "'venous'" in result.stdout
    assert "problem: " in result.stdout and "1 slice(s) missing" in result.stdout
    assert "choose a series with --series-uid" in result.stdout


def test_inspect_errors_are_one_line(tmp_path):
    result = run("inspect", str(tmp_path / "absent.nii.gz"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "absent.nii.gz: not found" in result.stderr
    (tmp_path / "text.nii.gz").write_text("hello")
    result = run("inspect", str(tmp_path / "text.nii.gz"))
    assert result.returncode == 2 and "text.nii.gz: not a readable NIfTI file" in result.stderr
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), np.inf, np.float32), np.eye(4)), str(tmp_path / "inf.nii.gz"))
    result = run("inspect", str(tmp_path / "inf.nii.gz"))
    assert result.returncode == 0 and "non-finite voxels: 0 NaN, 64 Inf" in result.stdout
