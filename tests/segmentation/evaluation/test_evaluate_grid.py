"""evaluate compares a prediction stored with flipped axes (a DICOM series' grid) with its reference voxel by voxel."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest

from medseg_attn.io.nifti import write_nifti
from medseg_attn.io.volumes import grid_mapping, on_grid, read_geometry
from medseg_attn.segmentation.evaluation.evaluate import evaluate_folders


def test_prediction_on_the_series_grid_matches_the_las_reference(ct_dir, tmp_path):
    reference = nib.load(str(ct_dir / "example_seg_dicom.nii.gz"))
    labels = np.asarray(reference.dataobj)
    series = read_geometry(ct_dir / "dicom")  # LPS grid of the DICOM series
    mapping = grid_mapping(labels.shape, reference.affine, series.shape, series.affine)
    (tmp_path / "pred").mkdir()
    (tmp_path / "label").mkdir()
    nib.save(reference, str(tmp_path / "label" / "ct.nii.gz"))
    write_nifti(on_grid(labels, mapping), tmp_path / "pred" / "ct.nii.gz", affine=series.affine)
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "label", tmp_path / "eval",
                               labels={0: "background", 5: "liver", 69: "humerus_left"}, progress=False)
    assert summary["classes"]["liver"]["dice"]["mean"] == 1.0
    assert summary["classes"]["humerus_left"]["hd95"]["mean"] == 0.0
    # a prediction that really is flipped is caught: stored on the series grid without reorienting the labels
    write_nifti(labels, tmp_path / "pred" / "ct.nii.gz", affine=series.affine)
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "label", tmp_path / "eval",
                               labels={0: "background", 5: "liver"}, progress=False)
    assert summary["classes"]["liver"]["dice"]["mean"] < 0.9
    with (tmp_path / "eval" / "metrics.csv").open() as handle:
        assert {row["case"] for row in csv.DictReader(handle)} == {"ct"}  # one row per class, all of case "ct"


def test_other_grids_are_still_refused(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "label").mkdir()
    data = np.zeros((6, 7, 8), np.uint8)
    data[2:4, 2:4, 2:4] = 1
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "label" / "a.nii.gz"))
    shifted = np.eye(4)
    shifted[0, 3] = 1.0  # one voxel off: not the same grid
    nib.save(nib.Nifti1Image(data, shifted), str(tmp_path / "pred" / "a.nii.gz"))
    with pytest.raises(ValueError, match="affine does not match label"):
        evaluate_folders(tmp_path / "pred", tmp_path / "label", tmp_path / "eval", progress=False)
