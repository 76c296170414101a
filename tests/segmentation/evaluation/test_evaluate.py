"""Tests of medseg_attn.segmentation.evaluation.evaluate on small NIfTI volumes built in tmp_path with known answers."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg_attn.segmentation.evaluation.evaluate import evaluate_case, evaluate_folders


def save(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0), affine: np.ndarray | None = None) -> Path:
    """Write a label map as NIfTI with a diagonal affine of the given spacing (or an explicit affine)."""
    if affine is None:
        affine = np.diag([*spacing, *[1.0] * (4 - len(spacing))])
        affine[:3, 3] = (-10.0, 5.0, 2.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def cube(shape, start, size) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


def hand_dice(pred: np.ndarray, label: np.ndarray) -> float:
    return 2.0 * np.logical_and(pred, label).sum() / (pred.sum() + label.sum())


def read_rows(output_dir: Path) -> list[dict]:
    with open(output_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def strict_json(path: Path) -> dict:
    def reject(constant):
        raise AssertionError(f"{path} holds {constant}, which is not valid JSON")

    return json.loads(path.read_text(), parse_constant=reject)


@pytest.fixture()
def two_cases(tmp_path: Path) -> dict:
    """Two cases, classes 1 and 2, with known partial overlaps; case_b misses class 2 in its prediction."""
    shape = (24, 20, 16)
    labels, preds = {}, {}
    label = np.zeros(shape, np.uint8)
    label[cube(shape, (2, 2, 2), 8)] = 1
    label[cube(shape, (12, 10, 6), 6)] = 2
    pred = np.zeros(shape, np.uint8)
    pred[cube(shape, (4, 3, 2), 8)] = 1
    pred[cube(shape, (13, 10, 7), 5)] = 2
    labels["case_a"], preds["case_a"] = label, pred
    label = np.zeros(shape, np.uint8)
    label[cube(shape, (5, 5, 5), 7)] = 1
    label[cube(shape, (14, 2, 1), 4)] = 2
    pred = np.zeros(shape, np.uint8)
    pred[cube(shape, (5, 6, 4), 7)] = 1
    labels["case_b"], preds["case_b"] = label, pred
    for name in labels:
        save(tmp_path / "labels" / f"{name}.nii.gz", labels[name], spacing=(0.8, 0.8, 1.5))
        save(tmp_path / "preds" / f"{name}.nii.gz", preds[name], spacing=(0.8, 0.8, 1.5))
    return {"root": tmp_path, "labels": labels, "preds": preds}


def test_dice_csv_and_summary_match_hand_computation(two_cases):
    root = two_cases["root"]
    summary = evaluate_folders(root / "preds", root / "labels", root / "out", labels={1: "liver", 2: "kidney"},
                               progress=False)
    rows = read_rows(root / "out")
    assert len(rows) == 2 * 2  # cases x classes
    assert list(rows[0]) == ["case", "class_index", "class_name", "dice", "hd95", "surface_dice",
                             "pred_voxels", "label_voxels"]
    expected: dict[str, list[float]] = {"liver": [], "kidney": []}
    for row in rows:
        pred = two_cases["preds"][row["case"]] == int(row["class_index"])
        label = two_cases["labels"][row["case"]] == int(row["class_index"])
        dice = hand_dice(pred, label)
        expected[row["class_name"]].append(dice)
        assert float(row["dice"]) == pytest.approx(dice, abs=1e-5)
        assert int(row["pred_voxels"]) == pred.sum() and int(row["label_voxels"]) == label.sum()
    assert {r["hd95"] for r in rows if r["case"] == "case_b" and r["class_name"] == "kidney"} == {"nan"}

    written = strict_json(root / "out" / "summary.json")
    assert written == summary
    assert written["cases"] == 2 and written["tolerance_mm"] == 1.0 and written["nan_policy"]
    for name, values in expected.items():
        assert written["classes"][name]["dice"]["mean"] == pytest.approx(np.mean(values), abs=1e-5)
        assert written["classes"][name]["dice"]["min"] == pytest.approx(min(values), abs=1e-5)
    assert written["mean_dice"] == pytest.approx(np.mean([np.mean(v) for v in expected.values()]), abs=1e-5)
    kidney_hd = written["classes"]["kidney"]["hd95"]  # case_b's NaN is left out, not propagated
    assert kidney_hd["nan_count"] == 1 and kidney_hd["mean"] == kidney_hd["max"] and kidney_hd["std"] == 0.0

    png = (root / "out" / "dice_boxplot.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert not [p for p in (root / "out").iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.parametrize(("axis", "spacing", "expected_mm"), [(2, (0.5, 0.7, 2.0), 6.0), (0, (0.5, 0.7, 2.0), 1.5)])
def test_hd95_of_offset_cubes_is_offset_in_mm(axis, spacing, expected_mm):
    # Two 6-voxel cubes offset by k = 3 voxels along one axis: every surface voxel is at most k voxels from the
    # other surface, and the whole far face (36 of the 152 surface voxels, > 5 %) is exactly k away, so
    # HD95 = HD = k * spacing[axis].
    shape = (20, 20, 20)
    label = cube(shape, (5, 5, 5), 6).astype(np.uint8)
    pred = np.roll(label, 3, axis=axis)
    result = evaluate_case(pred, label, spacing, [1], tolerance_mm=1.0)[1]
    assert result["hd95"] == pytest.approx(expected_mm, abs=1e-5)
    assert result["dice"] == pytest.approx(hand_dice(pred == 1, label == 1))


def test_surface_dice_identical_shifted_and_tolerance_in_mm():
    shape = (16, 16, 12)
    label = cube(shape, (4, 4, 3), 6).astype(np.uint8)
    assert evaluate_case(label, label, (1.0, 1.0, 2.0), [1], 1.0)[1]["surface_dice"] == pytest.approx(1.0)
    shifted = np.roll(label, 1, axis=2)  # one voxel along z = 2 mm
    assert evaluate_case(shifted, label, (1.0, 1.0, 2.0), [1], 1.0)[1]["surface_dice"] < 0.9
    assert evaluate_case(shifted, label, (1.0, 1.0, 2.0), [1], 2.5)[1]["surface_dice"] == pytest.approx(1.0)


def test_empty_structure_conventions():
    shape = (12, 12, 12)
    pred = np.zeros(shape, np.uint8)
    label = np.zeros(shape, np.uint8)
    pred[cube(shape, (1, 1, 1), 3)] = 2  # class 2 only predicted
    label[cube(shape, (6, 6, 6), 3)] = 3  # class 3 only in the label
    pred[cube(shape, (1, 6, 1), 4)] = 4
    label[cube(shape, (1, 6, 1), 4)] = 4  # class 4 identical; class 1 empty in both
    result = evaluate_case(pred, label, (1.0, 1.0, 1.0), [1, 2, 3, 4], 1.0)
    assert result[1] == {"dice": 1.0, "hd95": 0.0, "surface_dice": 1.0, "pred_voxels": 0, "label_voxels": 0}
    for index in (2, 3):
        assert result[index]["dice"] == 0.0 and result[index]["surface_dice"] == 0.0
        assert math.isnan(result[index]["hd95"])
    assert result[2]["pred_voxels"] == 27 and result[3]["label_voxels"] == 27
    assert (result[4]["dice"], result[4]["hd95"], result[4]["surface_dice"]) == (1.0, 0.0, 1.0)


def test_metric_without_any_finite_value_is_null_in_json(tmp_path):
    label = cube((8, 8, 8), (2, 2, 2), 3).astype(np.uint8)
    save(tmp_path / "l" / "x.nii.gz", label)
    save(tmp_path / "p" / "x.nii.gz", np.zeros_like(label))  # the tumour is missed: hd95 undefined
    summary = evaluate_folders(tmp_path / "p", tmp_path / "l", tmp_path / "out", labels={1: "tumour"},
                               progress=False)
    stats = strict_json(tmp_path / "out" / "summary.json")["classes"]["tumour"]
    assert stats["hd95"] == {"mean": None, "std": None, "median": None, "min": None, "max": None, "nan_count": 1}
    assert stats["dice"]["mean"] == 0.0 and stats["surface_dice"]["max"] == 0.0 and summary["mean_dice"] == 0.0


def test_prediction_values_outside_classes_count_as_background(caplog):
    shape = (10, 10, 10)
    label = cube(shape, (2, 2, 2), 4).astype(np.uint8)
    pred = label.copy()
    pred[cube(shape, (7, 7, 7), 2)] = 9
    with caplog.at_level(logging.WARNING):
        result = evaluate_case(pred, label, (1.0, 1.0, 1.0), [0, 1], 1.0, case="p.nii.gz")
    assert "[9]" in caplog.text and "p.nii.gz" in caplog.text
    assert result[1]["dice"] == 1.0 and result[0]["dice"] == 1.0  # 9 is background, as in the label


def test_labels_none_takes_union_of_label_values_and_background(tmp_path, caplog):
    shape = (10, 10, 8)
    first, second = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    first[cube(shape, (1, 1, 1), 3)] = 1
    second[cube(shape, (5, 5, 4), 3)] = 4
    save(tmp_path / "labels" / "a.nii", first)
    save(tmp_path / "labels" / "b.nii.gz", second)
    save(tmp_path / "preds" / "a.nii.gz", first)  # .nii vs .nii.gz matches on the name
    save(tmp_path / "preds" / "b.nii", second)
    save(tmp_path / "preds" / "orphan.nii.gz", second)
    with caplog.at_level(logging.WARNING):
        summary = evaluate_folders(tmp_path / "preds", tmp_path / "labels", tmp_path / "out",
                                   include_background=True, progress=False)
    assert "orphan" in caplog.text
    assert list(summary["classes"]) == ["background", "label_1", "label_4"]
    assert summary["cases"] == 2 and summary["mean_dice"] == 1.0
    assert len(read_rows(tmp_path / "out")) == 2 * 3


def test_4d_singleton_2d_and_flat_3d_files(tmp_path):
    label2d = np.zeros((20, 16), np.uint8)
    label2d[4:10, 4:10] = 1
    pred2d = np.roll(label2d, 2, axis=1)  # 2 voxels of 1 mm along the last non-singleton axis
    # a 2D file, a 3D file with one singleton axis (metrics in 2D) and a 4D file with a 4th axis of 1
    save(tmp_path / "l" / "flat.nii.gz", label2d[:, None, :], spacing=(0.5, 3.0, 1.0))
    save(tmp_path / "p" / "flat.nii.gz", pred2d[:, None, :, None], spacing=(0.5, 3.0, 1.0))
    save(tmp_path / "l" / "plane.nii.gz", label2d, spacing=(0.5, 1.0, 1.0))
    save(tmp_path / "p" / "plane.nii.gz", pred2d, spacing=(0.5, 1.0, 1.0))
    evaluate_folders(tmp_path / "p", tmp_path / "l", tmp_path / "out", labels={1: "lesion"}, progress=False)
    rows = read_rows(tmp_path / "out")
    assert [r["case"] for r in rows] == ["flat", "plane"]
    for row in rows:  # the singleton axis (3 mm) is dropped with its spacing: 2 x 1 mm, not 2 x 3 mm
        assert float(row["hd95"]) == pytest.approx(2.0)
        assert float(row["dice"]) == pytest.approx(hand_dice(pred2d == 1, label2d == 1))


def test_shape_mismatch_names_the_prediction_file(tmp_path):
    save(tmp_path / "l" / "case_1.nii.gz", np.zeros((8, 8, 8), np.uint8))
    save(tmp_path / "p" / "case_1.nii.gz", np.zeros((8, 8, 7), np.uint8))
    with pytest.raises(ValueError, match=r"p/case_1\.nii\.gz: shape \(8, 8, 7\) does not match label .*\(8, 8, 8\)"):
        evaluate_folders(tmp_path / "p", tmp_path / "l", tmp_path / "out", progress=False)


def test_affine_mismatch_names_the_prediction_file(tmp_path):
    save(tmp_path / "l" / "case_1.nii.gz", np.ones((8, 8, 8), np.uint8), spacing=(1.0, 1.0, 1.0))
    save(tmp_path / "p" / "case_1.nii.gz", np.ones((8, 8, 8), np.uint8), spacing=(1.0, 1.0, 2.0))
    with pytest.raises(ValueError, match=r"p/case_1\.nii\.gz: affine does not match label"):
        evaluate_folders(tmp_path / "p", tmp_path / "l", tmp_path / "out", progress=False)


def test_missing_predictions_are_all_listed_in_one_line(tmp_path):
    for name in ("case_1", "case_2", "case_3"):
        save(tmp_path / "l" / f"{name}.nii.gz", np.ones((4, 4, 4), np.uint8))
    save(tmp_path / "p" / "case_2.nii", np.ones((4, 4, 4), np.uint8))
    with pytest.raises(ValueError) as raised:
        evaluate_folders(tmp_path / "p", tmp_path / "l", tmp_path / "out", progress=False)
    message = str(raised.value)
    assert "case_1.nii.gz" in message and "case_3.nii.gz" in message and "case_2" not in message
    assert "\n" not in message
    assert not (tmp_path / "out").exists()


def test_empty_label_folder_and_non_integer_labels(tmp_path):
    (tmp_path / "l").mkdir()
    (tmp_path / "p").mkdir()
    with pytest.raises(ValueError, match=r"/l: no NIfTI label files"):
        evaluate_folders(tmp_path / "p", tmp_path / "l", tmp_path / "out", progress=False)
    soft = np.zeros((6, 6, 6), np.float32)
    soft[1:3, 1:3, 1:3] = 0.5
    save(tmp_path / "l" / "soft.nii.gz", soft)
    save(tmp_path / "p" / "soft.nii.gz", np.zeros((6, 6, 6), np.uint8))
    with pytest.raises(ValueError, match=r"soft\.nii\.gz: holds non-integer value 0\.5"):
        evaluate_folders(tmp_path / "p", tmp_path / "l", tmp_path / "out", labels={1: "a"}, progress=False)


def test_real_multi_organ_label_map_against_itself_and_with_an_organ_erased(ct_dir, tmp_path):
    image = nib.load(str(ct_dir / "example_seg_dicom.nii.gz"))
    crop = image.slicer[200:328, 112:240, :]  # 128x128x20 around the central organs, affine kept consistent
    data = np.asanyarray(crop.dataobj)
    present = sorted(int(v) for v in np.unique(data) if v != 0)
    erased = 5 if 5 in present else present[0]  # the liver in TotalSegmentator's numbering
    without = np.where(data == erased, 0, data).astype(data.dtype)
    for folder in ("labels", "same", "erased"):
        (tmp_path / folder).mkdir()
    nib.save(crop, str(tmp_path / "labels" / "ct.nii.gz"))
    nib.save(crop, str(tmp_path / "same" / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(without, crop.affine, crop.header), str(tmp_path / "erased" / "ct.nii.gz"))

    same = evaluate_folders(tmp_path / "same", tmp_path / "labels", tmp_path / "out_same", progress=False)
    assert len(same["classes"]) == len(present) >= 5
    assert same["mean_dice"] == 1.0
    assert all(stats["surface_dice"]["mean"] == 1.0 for stats in same["classes"].values())

    evaluate_folders(tmp_path / "erased", tmp_path / "labels", tmp_path / "out_erased", progress=False)
    rows = read_rows(tmp_path / "out_erased")
    assert len(rows) == len(present)
    for row in rows:
        expected = 0.0 if int(row["class_index"]) == erased else 1.0
        assert float(row["dice"]) == expected, row
        assert (row["hd95"] == "nan") == (expected == 0.0)


def test_hd95_is_the_95th_percentile_of_the_surface_distances_not_their_maximum():
    # By hand: a cube predicted exactly plus one stray voxel 12 voxels beyond its face. The stray voxel is 1 of the
    # prediction's 297 surface voxels (< 5 %), every other surface distance is 0: HD95 = 0 while HD = 12 voxels.
    spacing = (0.8, 1.5, 2.5)
    label = cube((30, 20, 20), (4, 6, 6), 8)
    pred = label.copy()
    pred[11 + 12, 9, 9] = True  # the cube's last x index is 11
    result = evaluate_case(pred.astype(np.uint8), label.astype(np.uint8), spacing, [1])[1]
    assert result["hd95"] == 0.0
    from monai.metrics import compute_hausdorff_distance

    hd = compute_hausdorff_distance(torch.from_numpy(pred)[None, None], torch.from_numpy(label)[None, None],
                                    include_background=True, spacing=list(spacing))
    assert float(hd) == pytest.approx(12 * 0.8)  # the maximum (HD) is the stray voxel, so HD95 != HD here


def test_every_class_matches_monais_metrics_on_the_full_one_hot_arrays():
    # Oracle: MONAI's HausdorffDistanceMetric(percentile=95), DiceMetric and SurfaceDiceMetric on the whole volume
    # in one-hot form (no crop to the class's bounding box), on irregular blobs where HD95 != HD.
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDiceMetric
    from monai.networks.utils import one_hot
    from scipy import ndimage

    rng = np.random.default_rng(3)
    spacing = (0.7, 1.1, 2.0)
    label = np.digitize(ndimage.gaussian_filter(rng.normal(size=(40, 36, 24)), 3.0), [-0.05, 0.05]).astype(np.uint8)
    pred = label.copy()
    noise = rng.random(label.shape) < 0.004  # scattered wrong voxels: far outliers the 95th percentile ignores
    pred[noise] = rng.integers(0, 3, int(noise.sum()))
    pred = np.where(ndimage.binary_dilation(label == 2, iterations=1), 2, pred).astype(np.uint8)
    ours = evaluate_case(pred, label, spacing, [1, 2], tolerance_mm=1.5)
    y_pred, y = (one_hot(torch.from_numpy(a.astype(np.int64))[None, None], 3) for a in (pred, label))
    hd95 = HausdorffDistanceMetric(include_background=False, percentile=95)(y_pred, y, spacing=list(spacing))[0]
    hd = HausdorffDistanceMetric(include_background=False)(y_pred, y, spacing=list(spacing))[0]
    dice = DiceMetric(include_background=False)(y_pred, y)[0]
    surface = SurfaceDiceMetric([1.5, 1.5], include_background=False)(y_pred, y, spacing=list(spacing))[0]
    for index, k in enumerate((1, 2)):
        assert float(hd95[index]) < float(hd[index])  # the case tells the percentile from the maximum
        assert ours[k]["hd95"] == pytest.approx(float(hd95[index]), rel=1e-5)
        assert ours[k]["dice"] == pytest.approx(float(dice[index]), rel=1e-5)
        assert ours[k]["surface_dice"] == pytest.approx(float(surface[index]), rel=1e-5)


def test_mask_dice_follows_the_case_metrics_convention():
    from medseg_attn.segmentation.measures.overlap import mask_dice

    rng = np.random.default_rng(3)
    pred, label = rng.random((6, 7, 5)) < 0.3, rng.random((6, 7, 5)) < 0.4
    assert mask_dice(pred, label) == pytest.approx(hand_dice(pred, label))
    scored = evaluate_case(pred.astype(int), label.astype(int), [1, 1, 1], [1])[1]["dice"]
    assert mask_dice(pred, label) == pytest.approx(scored, abs=1e-6)
    empty = np.zeros_like(pred)
    assert mask_dice(empty, empty) == 1.0 and mask_dice(pred, empty) == 0.0
