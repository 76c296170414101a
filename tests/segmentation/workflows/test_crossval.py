"""Cross-validation as one run: fold splits, resume, fold ensembles, postprocessing chosen out of fold."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg_attn.cli import main
from medseg_attn.segmentation.data.datasets import load_dataset, split_cases
from medseg_attn.segmentation.data.folds import assign_folds
from medseg_attn.segmentation.inference.predictor import Predictor
from medseg_attn.segmentation.measures.postprocessing import (
    ClassPostprocessing,
    apply_postprocessing,
    read_postprocessing,
    voxel_ml,
)
from medseg_attn.segmentation.workflows.cross_validation import choose_postprocessing, describe_choice
from medseg_attn.segmentation.workflows.crossval import fold_splits, train_cv
from medseg_attn.segmentation.workflows.train import train
from medseg_attn.training.checkpoint import load_checkpoint, save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from blob_dataset import tiny_config, write_blob_dataset  # noqa: E402


def test_folds_hold_every_case_once_and_keep_patients_together(tmp_path):
    cases = [{"case": f"c{i:02d}", "patient": f"p{i // 3}"} for i in range(14)]  # 5 patients, 3 + 3 + 3 + 3 + 2
    folds = assign_folds(cases, 3, seed=1)
    names = [c["case"] for fold in folds for c in fold]
    assert sorted(names) == sorted(c["case"] for c in cases)  # every case in exactly one fold
    for fold in folds:
        assert fold
    fold_of_patient = {}
    for k, fold in enumerate(folds):
        for case in fold:
            assert fold_of_patient.setdefault(case["patient"], k) == k  # a patient never crosses folds
    with pytest.raises(ValueError, match="needs at least 6 patients .*, got 5 patients"):
        assign_folds(cases, 6, seed=1)
    # without patients: the fold split training uses (data.folds / data.fold) is unchanged: round robin
    plain = [{"case": f"c{i}"} for i in range(7)]
    for k in range(3):
        train_part, validation = split_cases(plain, 0.2, 3, k, seed=4)
        assert [c["case"] for c in validation] == [c["case"] for c in assign_folds(plain, 3, 4)[k]]
        assert not {c["case"] for c in train_part} & {c["case"] for c in validation}
    recorded = fold_splits(plain, 3, 4)
    assert sorted(n for s in recorded for n in s["validation"]) == sorted(c["case"] for c in plain)


def test_patients_are_read_from_dataset_json(tmp_path):
    dataset = write_blob_dataset(tmp_path / "d", cases=4, patients=["a", "a", "b", "c"], size=18)
    cases = load_dataset(dataset).training
    assert [c["patient"] for c in cases] == ["a", "a", "b", "c"]
    for k in range(3):
        _, validation = split_cases(cases, 0.2, 3, k, seed=0)
        assert {c["case"] for c in validation} in ({"case_0", "case_1"}, {"case_2"}, {"case_3"})


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    """A 3-fold CV of 6 tiny cases: fold 0 trained alone, fold 1 interrupted after 1 epoch, then resumed."""
    root = tmp_path_factory.mktemp("cv")
    dataset = write_blob_dataset(root / "data")
    run = root / "run"
    first = train_cv(tiny_config(dataset, "train.max_epochs=1"), run, 3, fold=0, progress=False)
    assert set(first) == {0} and (run / "fold_0" / "finished.json").is_file()
    assert not (run / "cv").exists()  # the evaluation waits for every fold
    # fold 1 stops after one epoch without finishing (as if interrupted): a last.pt, no finished.json
    train(tiny_config(dataset, "train.max_epochs=1", "data.folds=3", "data.fold=1"), run / "fold_1", progress=False)
    results = train_cv(tiny_config(dataset, "train.max_epochs=2"), run, 3, resume=True, progress=False)
    return dataset, run, results


def test_cv_trains_every_fold_resumes_and_evaluates_out_of_fold(cv_run):
    dataset, run, results = cv_run
    assert results[0] is None  # finished before: skipped
    assert results[1].epochs == 2 and results[2].epochs == 2
    assert load_checkpoint(run / "fold_0" / "checkpoints" / "last.pt")["epoch"] == 1  # not retrained
    with (run / "fold_1" / "history.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"]  # resumed, not restarted
    splits = json.loads((run / "splits.json").read_text())["splits"]
    for split in splits:  # each fold trained on exactly the recorded split
        own = json.loads((run / f"fold_{split['fold']}" / "split.json").read_text())
        assert sorted(own["validation"]) == split["validation"] and sorted(own["train"]) == split["train"]
    table = list(csv.DictReader((run / "cv" / "cv_metrics.csv").open()))
    assert {row["fold"] for row in table} == {"0", "1", "2", "pooled"}
    pooled = [row for row in table if row["fold"] == "pooled"]
    assert [int(row["cases"]) for row in pooled] == [6, 6] and {row["class"] for row in pooled} == {"ball", "box"}
    summary = json.loads((run / "cv" / "summary.json").read_text())
    assert "3-fold CV Dice" in summary["line"] and "±" in summary["line"]
    assert (run / "cv" / "cv_dice.png").stat().st_size > 1000
    assert len(list((run / "cv" / "predictions").glob("*.nii.gz"))) == 6
    record = json.loads((run / "postprocessing.json").read_text())
    assert set(record["classes"]) == {"1", "2"}
    # a second CV into the same folder is refused without --resume
    with pytest.raises(ValueError, match="already holds a cross-validation run"):
        train_cv(tiny_config(dataset, "train.max_epochs=1"), run, 3, progress=False)


def test_the_cv_run_is_an_ensemble_of_its_folds(cv_run, tmp_path):
    dataset, run, _ = cv_run
    image = load_dataset(dataset).training[0]["image"]
    ensemble = Predictor.from_checkpoint(run, device="cpu", precision="fp32")
    assert len(ensemble.networks) == 3
    ensemble.postprocessing = {}
    mean = np.mean([Predictor.from_checkpoint(run / f"fold_{k}", device="cpu", precision="fp32")
                    .predict(image, probabilities=True).probabilities for k in range(3)], axis=0)
    together = ensemble.predict(image, probabilities=True).probabilities
    np.testing.assert_allclose(together, mean, atol=1e-5)
    chosen = Predictor.from_checkpoint(run, device="cpu", folds=[0, 2])
    assert chosen.sources == [str(run / f"fold_{k}" / "checkpoints" / "best.pt") for k in (0, 2)]
    (run / "postprocessing.json").write_text(json.dumps({"classes": {"1": {"largest_component": True},
                                                                     "2": {"largest_component": False}}}))
    assert Predictor.from_checkpoint(run, device="cpu").postprocessing == {  # a record from before the size rule
        1: ClassPostprocessing(largest_component=True), 2: ClassPostprocessing()}
    assert main(["-q", "predict", "--model", str(run), "--folds", "1", "--input", str(image), "--output",
                 str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "case_0.nii.gz").is_file()
    assert main(["-q", "predict", "--model", str(run), "--folds", "3", "--input", str(image), "--output",
                 str(tmp_path / "bad")]) == 2
    with pytest.raises(ValueError, match="cross-validation run folder"):
        Predictor.from_checkpoint(run / "fold_0", folds=[0])


def test_postprocessing_is_chosen_only_where_it_helped(tmp_path):
    run = tmp_path / "run"
    for folder in ("predictions", "references"):
        (run / "cv" / folder).mkdir(parents=True)
    affine = np.eye(4)
    for i in range(3):
        ref = np.zeros((20, 20, 20), np.uint8)
        ref[2:8, 2:8, 2:8] = 1  # one ball-like object
        ref[12:15, 2:5, 2:5] = 2  # class 2 has two true pieces
        ref[12:15, 12:15, 12:15] = 2
        pred = ref.copy()
        pred[16:18, 16:18, 1:3] = 1  # a false speck of class 1: removing it helps
        nib.save(nib.Nifti1Image(ref, affine), run / "cv" / "references" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(pred, affine), run / "cv" / "predictions" / f"c{i}.nii.gz")
    record = choose_postprocessing(run, {0: "background", 1: "ball", 2: "parts"})
    assert record["classes"]["1"]["largest_component"] is True
    assert record["classes"]["1"]["dice_after"] > record["classes"]["1"]["dice_before"]
    assert record["classes"]["2"]["largest_component"] is False  # it would drop a true piece
    assert record["classes"]["2"]["min_size_ml"] is None and record["classes"]["2"]["dice_after"] == 1.0
    assert read_postprocessing(run) == {1: ClassPostprocessing(largest_component=True), 2: ClassPostprocessing()}
    cleaned = apply_postprocessing(pred, read_postprocessing(run), 0.001)  # what Predictor.predict applies
    assert not cleaned[16:18, 16:18, 1:3].any() and (cleaned == 2).sum() == (ref == 2).sum()


def test_a_size_rule_is_chosen_where_it_beats_the_largest_component_and_applied_in_ml(tmp_path):
    run = tmp_path / "run"
    for folder in ("predictions", "references"):
        (run / "cv" / folder).mkdir(parents=True)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])  # 8 mm^3 = 0.008 ml per voxel
    for i in range(3):
        ref = np.zeros((24, 24, 24), np.uint8)
        ref[2:8, 2:8, 2:8] = 1  # two true pieces of 216 and 125 voxels
        ref[14:19, 14:19, 14:19] = 1
        pred = ref.copy()
        pred[21, 2, 2] = pred[2, 21, 21] = 1  # two false one-voxel specks
        nib.save(nib.Nifti1Image(ref, affine), run / "cv" / "references" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(pred, affine), run / "cv" / "predictions" / f"c{i}.nii.gz")
    entry = choose_postprocessing(run, {0: "background", 1: "nodes"})["classes"]["1"]
    # the largest component would drop a true piece; a size of 1 % of the median volume (0.0273 ml) removes the specks
    assert entry["largest_component"] is False and entry["min_size_ml"] == pytest.approx(0.01 * 341 * 0.008, abs=1e-4)
    assert entry["dice_after"] == 1.0 and entry["candidates"]["largest component kept"] < entry["dice_before"] < 1.0
    assert "components below" in describe_choice(entry)
    rule = read_postprocessing(run)[1]
    assert rule == ClassPostprocessing(min_size_ml=entry["min_size_ml"])
    # on a finer grid the same rule in ml removes more voxels: a 3-voxel piece of 1 mm voxels is 0.003 ml
    fine = np.zeros((10, 10, 10), np.uint8)
    fine[0, 0, 0:3] = 1
    fine[5:9, 5:9, 5:9] = 1
    cleaned = apply_postprocessing(fine, {1: rule}, voxel_ml(np.eye(4)))
    assert cleaned[0, 0].sum() == 0 and cleaned[5:9, 5:9, 5:9].all()
    kept = apply_postprocessing(fine, {1: ClassPostprocessing(min_size_ml=0.002)}, voxel_ml(np.eye(4)))
    np.testing.assert_array_equal(kept, fine)  # 3 voxels = 0.003 ml >= 0.002 ml: kept
    with pytest.raises(ValueError, match="volume of a voxel"):
        apply_postprocessing(fine, {1: rule})
    np.testing.assert_array_equal(apply_postprocessing(fine, {2: rule}, voxel_ml(np.eye(4))), fine)  # absent: unchanged


def test_cli_cv_command_and_errors(cv_run, tmp_path, capsys):
    _, run, _ = cv_run
    assert main(["-q", "cv", str(run)]) == 0
    assert "3-fold CV Dice" in capsys.readouterr().out
    assert main(["-q", "cv", str(tmp_path)]) == 2
    assert "not a cross-validation run folder" in capsys.readouterr().err
    # a lesion dataset: --lesions scores the out-of-fold predictions lesion by lesion (a structure name not in the
    # dataset is refused before any case is predicted)
    assert main(["-q", "cv", str(run), "--lesions", "tumour"]) == 2
    assert "tumour: not an evaluated structure" in capsys.readouterr().err
    assert main(["-q", "cv", str(run), "--lesions", "ball", "--lesion-overlap", "iou:0.1"]) == 0
    assert "lesions (pooled): ball F1" in capsys.readouterr().out
    rows = list(csv.DictReader((run / "cv" / "evaluation" / "lesions.csv").open()))
    assert len(rows) == 6 and {row["structure"] for row in rows} == {"ball"}
    summary = json.loads((run / "cv" / "summary.json").read_text())
    assert set(summary["lesions"]) == {"ball"} and "lesion_f1" in summary["lesions"]["ball"]


def test_bundle_export_and_inspect_of_a_cv_run(cv_run, tmp_path, capsys):
    """A CV run is one model for predict and for ONNX / TorchScript export (the fold ensemble, tested below); a
    bundle takes one of its folds and says so in one line; inspect lists the folds and shows the first one's card."""
    _, run, _ = cv_run
    assert main(["-q", "export", "--model", str(run), "--format", "bundle", "--output", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "is a cross-validation run" in err and str(run / "fold_0") in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "b").exists()
    assert main(["inspect", str(run)]) == 0  # the folds, then the first fold's card
    out = capsys.readouterr().out
    assert "cross-validation run of 3 folds (fold_0, fold_1, fold_2)" in out
    assert str(run / "fold_0" / "checkpoints") in out and "Dice" in out
    assert main(["-q", "export", "--model", str(run / "fold_0"), "--format", "torchscript", "--output",
                 str(tmp_path / "m.ts")]) == 0
    assert (tmp_path / "m.ts").is_file()


def test_a_cv_run_exports_as_one_ensemble_network(cv_run, tmp_path, capsys):
    dataset, run, _ = cv_run
    image = load_dataset(dataset).training[0]["image"]
    (run / "postprocessing.json").write_text(json.dumps({"classes": {"1": {"largest_component": True},
                                                                     "2": {"largest_component": False}}}))
    assert main(["-q", "export", "--model", str(run), "--format", "torchscript", "--output",
                 str(tmp_path / "cv.ts")]) == 0
    traced = torch.jit.load(str(tmp_path / "cv.ts"))
    members = [Predictor.from_checkpoint(run / f"fold_{k}", device="cpu", precision="fp32") for k in range(3)]
    x = torch.randn(1, 1, 20, 24, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the mean of the folds' calibrated probabilities, by hand
        outputs = [m.networks[0](x) for m in members]
        logits = [out[0] if isinstance(out, (list, tuple)) else out for out in outputs]
        expected = torch.stack([torch.softmax(z / m.temperatures[0], 1) for z, m in zip(logits, members)]).mean(0)
        np.testing.assert_allclose(torch.softmax(traced(x), 1).numpy(), expected.numpy(), atol=1e-4)
    assert main(["-q", "export", "--model", str(run), "--format", "onnx", "--output", str(tmp_path / "cv.onnx")]) == 0
    from medseg_attn.networks.export import read_metadata

    metadata = read_metadata(tmp_path / "cv.onnx")
    assert metadata["ensemble"]["folds"] == ["fold_0", "fold_1", "fold_2"]
    onnx = Predictor.from_checkpoint(tmp_path / "cv.onnx")
    assert onnx.postprocessing == {1: ClassPostprocessing(largest_component=True), 2: ClassPostprocessing()}
    ensemble = Predictor.from_checkpoint(run, device="cpu", precision="fp32")
    ours, theirs = ensemble.predict(image, probabilities=True), onnx.predict(image, probabilities=True)
    # each fold's temperature is applied per window inside the network, predict --model RUN after blending the
    # windows: the same where one window covers a voxel, close where windows overlap
    assert np.abs(theirs.probabilities - ours.probabilities).mean() < 0.01
    assert np.mean(theirs.labels == ours.labels) > 0.99
    uncalibrated = tmp_path / "uncalibrated"  # without temperatures the two are the same computation
    shutil.copytree(run, uncalibrated)
    for k in range(3):
        path = uncalibrated / f"fold_{k}" / "checkpoints" / "best.pt"
        save_checkpoint({**load_checkpoint(path), "calibration": {"temperature": 1.0}}, path)
    assert main(["-q", "export", "--model", str(uncalibrated), "--format", "onnx", "--output",
                 str(tmp_path / "plain.onnx")]) == 0
    ours = Predictor.from_checkpoint(uncalibrated, device="cpu", precision="fp32").predict(image, probabilities=True)
    theirs = Predictor.from_checkpoint(tmp_path / "plain.onnx").predict(image, probabilities=True)
    np.testing.assert_allclose(theirs.probabilities, ours.probabilities, atol=1e-4)
    assert main(["-q", "export", "--model", str(run), "--format", "bundle", "--output", str(tmp_path / "b")]) == 2
    assert "a MONAI bundle holds one model: export one fold" in capsys.readouterr().err


def _lesion_cv(tmp_path, speck: int) -> Path:
    """Three cases of a lesion class: lesions of 125, 64 and 27 voxels (1 mm), predicted exactly, plus two false
    predicted specks of ``speck`` voxels each."""
    run = tmp_path / f"run{speck}"
    for folder in ("predictions", "references"):
        (run / "cv" / folder).mkdir(parents=True)
    for i in range(3):
        ref = np.zeros((30, 30, 30), np.uint8)
        ref[2:7, 2:7, 2:7] = 1
        ref[12:16, 12:16, 12:16] = 1
        ref[22:25, 22:25, 22:25] = 1
        pred = ref.copy()
        side = round(speck ** (1 / 3))
        pred[2:2 + side, 25:25 + side, 2:2 + side] = 1
        pred[25:25 + side, 2:2 + side, 25:25 + side] = 1
        nib.save(nib.Nifti1Image(ref, np.eye(4)), run / "cv" / "references" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(pred, np.eye(4)), run / "cv" / "predictions" / f"c{i}.nii.gz")
    return run


def test_a_lesion_class_is_postprocessed_on_lesion_f1_without_losing_lesionwise_dice(tmp_path):
    labels = {0: "background", 1: "lesion"}
    run = _lesion_cv(tmp_path, speck=1)  # one-voxel false specks: a minimum lesion volume removes them
    entry = choose_postprocessing(run, labels, {1})["classes"]["1"]
    assert entry["judged_by"] == "lesions" and entry["largest_component"] is False
    assert entry["lesion_f1_before"] == pytest.approx(2 * 9 / (2 * 9 + 6)) and entry["lesion_f1_after"] == 1.0
    assert entry["lesionwise_dice_after"] >= entry["lesionwise_dice_before"]
    assert 0.001 <= entry["min_size_ml"] <= 0.027  # above a speck, at most the smallest true lesion
    assert "largest component kept" not in entry["candidates"]  # never for lesions: it keeps one lesion
    assert read_postprocessing(run) == {1: ClassPostprocessing(min_size_ml=entry["min_size_ml"])}
    # the same maps judged as an organ (voxel Dice) also try the largest component, which drops two true lesions
    organ = choose_postprocessing(run, labels)["classes"]["1"]
    assert "judged_by" not in organ and organ["candidates"]["largest component kept"] < organ["dice_before"]
    # false lesions larger than true ones (64 voxels vs 27): a size that drops them drops more true lesions, and
    # one below them only drops true lesions, so nothing is chosen
    same = choose_postprocessing(_lesion_cv(tmp_path, speck=64), labels, {1})["classes"]["1"]
    assert same["min_size_ml"] is None and same["lesion_f1_after"] == same["lesion_f1_before"]
