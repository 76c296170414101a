"""Dataset layouts (MSD dataset.json, nnU-Net raw folders), header checks, target spacing, splits."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medseg_attn.segmentation.data.datasets import check_cases, load_dataset, median_spacing, split_cases


def _volume(path, shape=(12, 10, 8), spacing=(1.0, 1.0, 2.0), value=None, dtype=np.int16):
    affine = np.diag([*spacing, 1.0])
    data = np.zeros(shape, dtype=dtype) if value is None else np.full(shape, value, dtype=dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _msd(root, cases=3, spacing=(1.0, 1.0, 2.0)):
    training = []
    for i in range(cases):
        _volume(root / "imagesTr" / f"case_{i}.nii.gz", spacing=spacing)
        _volume(root / "labelsTr" / f"case_{i}.nii.gz", spacing=spacing, dtype=np.uint8)
        training.append({"image": f"./imagesTr/case_{i}.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"})
    _volume(root / "imagesTs" / "case_9.nii.gz")
    spec = {"name": "Spleen", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "spleen"},
            "training": training, "test": ["./imagesTs/case_9.nii.gz"]}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def test_msd_layout(tmp_path):
    root = _msd(tmp_path / "Task09_Spleen")
    for target in (root, root / "dataset.json"):
        dataset = load_dataset(target)
        assert dataset.labels == {0: "background", 1: "spleen"}
        assert dataset.modality == "ct" and dataset.channels == 1
        assert [c["case"] for c in dataset.training] == ["case_0", "case_1", "case_2"]
        assert dataset.training[0]["image"] == root / "imagesTr" / "case_0.nii.gz"
        assert dataset.test[0]["case"] == "case_9"
    assert check_cases(dataset.training) == []


def test_nnunet_layout_with_channel_suffix(tmp_path):
    root = tmp_path / "Dataset004_Hippocampus"
    for name in ("hippo_001", "hippo_002"):
        _volume(root / "imagesTr" / f"{name}_0000.nii.gz")
        _volume(root / "labelsTr" / f"{name}.nii.gz", value=2, dtype=np.uint8)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    dataset = load_dataset(root)
    assert dataset.labels == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert dataset.modality == "mr"
    assert [c["case"] for c in dataset.training] == ["hippo_001", "hippo_002"]
    assert dataset.training[0]["image"].name == "hippo_001_0000.nii.gz"
    # without dataset.json: classes are read from the label maps
    (root / "dataset.json").unlink()
    assert load_dataset(root).labels == {0: "background", 1: "label_1", 2: "label_2"}


def test_missing_files_and_bad_json_are_named(tmp_path):
    root = _msd(tmp_path / "T")
    (root / "labelsTr" / "case_1.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"labelsTr/case_1.nii.gz"):
        load_dataset(root)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="dataset.json: not valid JSON"):
        load_dataset(root)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset(tmp_path / "nowhere")


def test_check_cases_lists_every_problem(tmp_path):
    root = _msd(tmp_path / "T", cases=3)
    _volume(root / "labelsTr" / "case_0.nii.gz", shape=(12, 10, 9), dtype=np.uint8)  # wrong shape
    _volume(root / "labelsTr" / "case_1.nii.gz", spacing=(1.0, 1.0, 3.0), dtype=np.uint8)  # wrong grid
    (root / "imagesTr" / "case_2.nii.gz").write_text("this is not a NIfTI file")  # text named .nii.gz
    problems = check_cases(load_dataset(root).training)
    assert len(problems) == 3
    assert "labelsTr/case_0.nii.gz: label shape (12, 10, 9) does not match image" in problems[0]
    assert "labelsTr/case_1.nii.gz: label affine differs" in problems[1]
    assert "imagesTr/case_2.nii.gz: not a readable NIfTI file" in problems[2]


def test_median_spacing_reads_headers(tmp_path):
    root = _msd(tmp_path / "T", cases=3, spacing=(0.8, 0.8, 2.5))
    assert median_spacing(load_dataset(root).training) == (0.8, 0.8, 2.5)


def test_splits_are_deterministic_and_folds_partition():
    cases = [{"case": f"c{i:02d}"} for i in range(10)]
    train, val = split_cases(cases, 0.2, 0, 0, seed=1)
    assert len(val) == 2 and len(train) == 8
    assert split_cases(cases, 0.2, 0, 0, seed=1) == (train, val)
    assert not {c["case"] for c in train} & {c["case"] for c in val}
    held_out = []
    for fold in range(5):
        train, val = split_cases(cases, 0.0, 5, fold, seed=3)
        assert len(val) == 2 and len(train) == 8
        held_out += [c["case"] for c in val]
    assert sorted(held_out) == [c["case"] for c in cases]
    with pytest.raises(ValueError, match="at least 5 cases"):
        split_cases(cases[:3], 0.0, 5, 0, seed=0)
