"""Round three: prediction batches, run.json, the output guard, evaluate, postprocessing, ONNX and the device.

Each test builds real files from the tiny checkpoint of ``conftest.py`` (a cross-validation run is that checkpoint
as every fold, with ``cv.json``) and runs the real command line."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, run
from reliability_helpers import dataset, digest, volume

from medseg_attn.training.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture()
def image(tmp_path):
    (tmp_path / "in").mkdir()
    return volume(tmp_path / "in" / "case.nii.gz")


def _cv_run(root, model, folds=2, postprocessing=None):
    """A cross-validation run folder whose folds are the tiny checkpoint (with ``postprocessing.json``)."""
    root.mkdir(parents=True)
    (root / "cv.json").write_text(json.dumps({"folds": folds, "seed": 0, "dataset": "d"}))
    for fold in range(folds):
        (root / f"fold_{fold}" / "checkpoints").mkdir(parents=True)
        shutil.copy(model, root / f"fold_{fold}" / "checkpoints" / "best.pt")
    if postprocessing is not None:
        (root / "postprocessing.json").write_text(json.dumps({"classes": postprocessing}))
    return root


def _predict(model, image, output, *extra):
    return run("-q", "predict", "--model", str(model), "--input", str(image), "--output", str(output), *extra)


# 6. run.json names the model that made the folder: another model's folder is refused -----------------------------

def test_predict_refuses_a_folder_another_model_filled(segmentation_model, image, tmp_path):
    other = tmp_path / "other.pt"
    save_checkpoint({**load_checkpoint(segmentation_model), "epoch": 7}, other)  # another model: other bytes
    out = tmp_path / "out"
    assert _predict(segmentation_model, image, out).returncode == 0
    first = json.loads((out / "run.json").read_text())["model"]["models"][0]["sha256"]
    result = _predict(segmentation_model, image, out)  # the same model: resuming keeps working
    assert result.returncode == 0 and "skipped 1 existing" in result.stdout, result.stderr
    before = digest(out)
    result = _predict(other, image, out)
    assert_one_line_error(result, str(out), "another model", first[:12], "--overwrite")
    assert digest(out) == before  # run.json, label tables and the case untouched
    result = _predict(other, image, out, "--overwrite")
    assert result.returncode == 0, result.stderr
    models = json.loads((out / "run.json").read_text())["model"]["models"]
    assert [m["path"] for m in models] == [str(other.resolve())] and models[0]["sha256"] != first


# 7. evaluate leaves the ignore label of sparse labels out of every metric ------------------------------------------

def test_evaluate_leaves_ignore_voxels_out_of_every_metric(tmp_path):
    root = dataset(tmp_path / "sparse", cases=2, labels={"0": "background", "1": "organ", "2": "ignore"})
    pred = tmp_path / "pred"
    pred.mkdir()
    for path in (root / "labelsTr").glob("*.nii.gz"):
        label = nib.load(path)
        data = np.asarray(label.dataobj).copy()
        data[data == 2] = 1  # unannotated voxels that are organ: a perfect prediction
        nib.save(nib.Nifti1Image(data, label.affine), pred / path.name)
    out = tmp_path / "evaluation"
    result = run("evaluate", "--pred", str(pred), "--label", str(root / "labelsTr"), "--output", str(out),
                 "--labels", str(root / "dataset.json"), "--include-background")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["classes"]) == {"background", "organ"} and summary["ignore_label"] == 2
    for name in ("background", "organ"):
        assert summary["classes"][name]["dice"]["min"] == 1.0
        assert summary["classes"][name]["surface_dice"]["min"] == 1.0
        assert summary["classes"][name]["hd95"]["max"] == 0.0
    assert "not in the class names given" not in result.stderr


def test_evaluate_without_an_ignore_label_scores_every_voxel(tmp_path):
    root = dataset(tmp_path / "dense", cases=2, labels={"0": "background", "1": "a", "2": "b"})
    out = tmp_path / "evaluation"
    result = run("-q", "evaluate", "--pred", str(root / "labelsTr"), "--label", str(root / "labelsTr"), "--output",
                 str(out), "--labels", str(root / "dataset.json"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["classes"]) == {"a", "b"} and summary["ignore_label"] is None


# 8. the onnxruntime engine refuses --folds and a --device it cannot run on -----------------------------------------

def test_onnx_engine_refuses_folds_and_devices_it_cannot_honour(segmentation_model, image, tmp_path):
    pytest.importorskip("onnxruntime")
    cv = _cv_run(tmp_path / "cv", segmentation_model)
    exported = tmp_path / "ensemble.onnx"
    result = run("-q", "export", "--model", str(cv), "--format", "onnx", "--output", str(exported))
    assert result.returncode == 0, result.stderr
    result = _predict(exported, image, tmp_path / "a", "--engine", "onnxruntime", "--folds", "0")
    assert_one_line_error(result, "--folds 0", "onnxruntime")
    result = _predict(exported, image, tmp_path / "b", "--engine", "onnxruntime", "--device", "cuda:1")
    assert_one_line_error(result, "--device cuda:1", "CPU")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    result = _predict(exported, image, tmp_path / "c", "--device", "cpu")  # what it can do: silent
    assert result.returncode == 0 and (tmp_path / "c" / "case.nii.gz").is_file(), result.stderr


# 9. predict never writes into a folder its run owns (cv/ with the out-of-fold predictions included) ---------------

def test_predict_never_writes_into_the_folders_a_run_owns(segmentation_model, image, tmp_path):
    cv = _cv_run(tmp_path / "cv", segmentation_model)
    (cv / "cv" / "predictions").mkdir(parents=True)
    volume(cv / "cv" / "predictions" / "case.nii.gz", seed=3)  # the out-of-fold prediction `cv` scored
    (cv / "fold_0" / "tensorboard").mkdir()
    (cv / "fold_0" / "tensorboard" / "events").write_text("x")
    before = digest(cv)
    for model, output in ((cv, cv / "cv" / "predictions"), (cv, cv / "cv"), (cv / "fold_0", cv / "cv"),
                          (cv / "fold_0" / "checkpoints" / "best.pt", cv / "cv" / "predictions"),
                          (cv / "fold_0", cv / "fold_0" / "tensorboard")):
        result = _predict(model, image, output, "--overwrite")
        assert_one_line_error(result, str(output), "would write into the model")
        assert digest(cv) == before
    for _ in range(2):  # a new folder of the run, then the same one again (an interrupted batch finished)
        result = _predict(cv, image, cv / "predictions")
        assert result.returncode == 0, result.stderr
    assert (cv / "predictions" / "case.nii.gz").is_file()


# 10. postprocessing.json is checked as the config loader checks a configuration -------------------------------------

@pytest.mark.parametrize("classes, fragments", [
    ({"1": {"largest_component": "false"}}, ("class 1", "largest_component", "'false'")),
    ({"1": {"largest_component": False, "min_size_ml": -2.5}}, ("class 1", "min_size_ml", "-2.5")),
    ({"1": {"largest_component": False, "min_size_ml": "big"}}, ("class 1", "min_size_ml", "'big'")),
    ({"9": {"largest_component": True}}, ("class 9", "not a foreground class", "1=liver")),
    ({"one": {"largest_component": True}}, ("class 'one'", "class index")),
])
def test_postprocessing_values_are_checked(segmentation_model, image, tmp_path, classes, fragments):
    cv = _cv_run(tmp_path / "cv", segmentation_model, postprocessing=classes)
    result = _predict(cv, image, tmp_path / "out")
    assert_one_line_error(result, str(cv / "postprocessing.json"), *fragments)
    assert not (tmp_path / "out").exists()


def test_good_postprocessing_is_applied_silently(segmentation_model, image, tmp_path):
    from medseg_attn.segmentation.inference.predictor import Predictor
    from medseg_attn.segmentation.measures.postprocessing import ClassPostprocessing

    classes = {"1": {"name": "liver", "largest_component": True, "min_size_ml": None, "dice_before": 0.5},
               "2": {"largest_component": False, "min_size_ml": 0.25}}
    cv = _cv_run(tmp_path / "cv", segmentation_model, postprocessing=classes)
    assert Predictor.from_checkpoint(cv, device="cpu").postprocessing == {
        1: ClassPostprocessing(largest_component=True), 2: ClassPostprocessing(min_size_ml=0.25)}
    result = _predict(cv, image, tmp_path / "out")
    assert result.returncode == 0 and "error" not in result.stderr, result.stderr


# 15. max_foreground_uncertainty without --uncertainty: said at the start of the batch ------------------------------

def test_an_uncertainty_limit_without_uncertainty_is_said(segmentation_model, image, tmp_path):
    result = run("predict", "--model", str(segmentation_model), "--input", str(image), "--output",
                 str(tmp_path / "a"), "--review-set", "max_foreground_uncertainty=0.2")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "max_foreground_uncertainty" in line]
    assert len(lines) == 1 and "--uncertainty" in lines[0] and "never checked" in lines[0], result.stderr
    result = run("predict", "--model", str(segmentation_model), "--input", str(image), "--output",
                 str(tmp_path / "b"), "--review-set", "max_foreground_uncertainty=0.2", "--uncertainty")
    assert result.returncode == 0 and "max_foreground_uncertainty" not in result.stderr, result.stderr


# 23. auto picks Apple's MPS where torch offers it, says so, and lets operations MPS lacks run on the CPU ------------

def test_auto_device_picks_mps_where_torch_reports_it(monkeypatch, caplog, tmp_path):
    from medseg_attn.errors import UserError
    from medseg_attn.io.manifest import RunManifest
    from medseg_attn.runtime import device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert device.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="no Apple MPS backend"):
        device.resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setenv("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    device._announce_mps.cache_clear()
    with caplog.at_level(logging.INFO, logger="medseg_attn.runtime.device"):
        chosen = device.resolve_device("auto")
        device.resolve_device("auto")
    assert chosen == torch.device("mps") and device.resolve_device("mps") == torch.device("mps")
    said = [record.getMessage() for record in caplog.records if "MPS" in record.getMessage()]
    assert len(said) == 1 and "PYTORCH_ENABLE_MPS_FALLBACK=1" in said[0] and "CPU" in said[0], said
    assert device.precision_reason("auto", chosen) == "auto on Apple MPS: fp32"
    manifest = RunManifest(tmp_path, "predict")
    manifest.add_model([], device=str(chosen))
    recorded = json.loads(manifest.finish("ok").read_text())
    assert recorded["machine"]["mps"] is True and recorded["model"]["device"] == "mps"
    device._announce_mps.cache_clear()


def test_importing_medseg_attn_on_macos_turns_the_mps_fallback_on(tmp_path):
    code = ("import os, sys; sys.platform = 'darwin'; import medseg_attn; "
            "print(os.environ.get('PYTORCH_ENABLE_MPS_FALLBACK'))")
    env = {key: value for key, value in os.environ.items() if key != "PYTORCH_ENABLE_MPS_FALLBACK"}
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert found.stdout.strip() == "1"
    kept = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=env | {"PYTORCH_ENABLE_MPS_FALLBACK": "0"})
    assert kept.stdout.strip() == "0"  # the user's own setting wins
