"""Outputs a study can trust (issue 24), on a short real training run on the brain MRI:

byte-identical repeated predictions (also while another process loads the CPU), run.json in every output folder,
the training fingerprint's QC flags (a moved or resampled training case: no flag; a header with a flipped axis,
CT into the brain model: flagged) and the temperature fitted on the validation cases.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medseg_attn.cli import main
from medseg_attn.config import load_config
from medseg_attn.demo_data import build_demo_dataset
from medseg_attn.segmentation.inference.predictor import Predictor
from medseg_attn.segmentation.qc.qc_report import Review
from medseg_attn.segmentation.workflows.batch import predict_files
from medseg_attn.segmentation.workflows.train import train
from medseg_attn.training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Six brain cases at 4 mm (one validates), 8 short epochs."""
    root = tmp_path_factory.mktemp("trust")
    dataset = build_demo_dataset(root / "data", train_cases=6, test_cases=2, seed=5, train_spacing=4.0,
                                 test_spacing=4.0, progress=False)
    config = load_config(overrides=[
        f"data.dataset={dataset}", "data.spacing=[4,4,4]", "data.patch_size=[32,32,32]", "data.samples_per_case=1",
        "data.validation_fraction=0.2", "model.channels=[8,16,32,64]", "train.steps_per_epoch=8",
        "train.batch_size=2", "train.val_interval=1", "train.lr=0.01", "train.warmup_steps=0", "train.max_epochs=8",
        "data.augmentation.enabled=false", "inference.precision=auto"])
    train(config, root / "run", progress=False)
    return root


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_training_keeps_fingerprint_temperature_and_run_json(run):
    best = run / "run" / "checkpoints" / "best.pt"
    payload = load_checkpoint(best)
    fingerprint = payload["training_fingerprint"]
    assert fingerprint["cases"] == 6 and fingerprint["spacing"]["min"] == [4.0, 4.0, 4.0]
    assert set(fingerprint["structures"]) == {"grey_matter", "white_matter"}
    calibration = payload["calibration"]
    assert calibration == json.loads((run / "run" / "calibration.json").read_text())
    held_out = calibration["held_out_half"]
    assert held_out["after"]["nll"] <= held_out["before"]["nll"]  # fitted on one half, scored on the other
    record = json.loads((run / "run" / "run.json").read_text())
    assert record["command"] == "train" and record["outcome"] == "ok"
    assert record["model"]["models"][0]["sha256"] == _sha(best)
    assert record["model"]["temperature"] == calibration["temperature"]
    assert record["result"]["epochs"] == 8


def test_repeated_predictions_are_byte_identical_on_an_idle_and_a_loaded_machine(run, tmp_path):
    images = run / "data" / "imagesTs"
    common = ["predict", "--model", str(run / "run"), "--input", str(images), "--probabilities", "--uncertainty"]
    assert main(["-q", *common, "--output", str(tmp_path / "idle")]) == 0
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # competes for the CPU meanwhile
    try:
        assert main(["-q", *common, "--output", str(tmp_path / "loaded")]) == 0
    finally:
        busy.kill()
        busy.wait()
    written = sorted(p.name for p in (tmp_path / "idle").glob("*.nii.gz"))
    assert len(written) == 6  # 2 cases x label map, probabilities, uncertainty
    for name in written:
        assert _sha(tmp_path / "idle" / name) == _sha(tmp_path / "loaded" / name), name
    record = json.loads((tmp_path / "loaded" / "run.json").read_text())
    assert record["command"] == "predict" and record["outcome"] == "ok"
    assert record["command_line"].startswith("medseg-attn -q predict --model")
    model = record["model"]
    assert model["precision"] in ("fp32", "bf16") and model["precision_reason"]
    assert model["models"][0]["sha256"] == _sha(run / "run" / "checkpoints" / "best.pt")
    assert len(model["plan_sha256"]) == 64 and model["training_fingerprint"] is True
    inputs = {entry["name"]: entry for entry in record["inputs"]}
    case = sorted(images.glob("*.nii.gz"))[0]
    entry = inputs[case.name[:-len(".nii.gz")]]
    assert entry["sha256"] == _sha(case) and entry["spacing_mm"] == [4.0, 4.0, 4.0]
    assert entry["shape"] == list(nib.load(str(case)).shape)
    assert record["cases"] == {name: "ok" for name in inputs}
    # evaluate's folder gets its own record
    assert main(["-q", "evaluate", "--pred", str(tmp_path / "idle"), "--label", str(run / "data" / "labelsTs"),
                 "--output", str(tmp_path / "evaluation")]) == 0
    record = json.loads((tmp_path / "evaluation" / "run.json").read_text())
    assert record["command"] == "evaluate" and record["outcome"] == "ok" and len(record["inputs"]) == 4


def _variant(source, target, data=None, affine=None):
    image = nib.load(str(source))
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj if data is None else data, np.float32),
                             image.affine if affine is None else affine), target)
    return target


def test_fingerprint_flags_flipped_and_foreign_scans_but_not_moved_training_cases(run, tmp_path):
    source = sorted((run / "data" / "imagesTr").glob("*.nii.gz"))[0]
    image = nib.load(str(source))
    data = np.asarray(image.dataobj, np.float32)
    inputs = tmp_path / "in"
    inputs.mkdir()
    moved = image.affine.copy()
    moved[:3, 3] += [30.0, -20.0, 15.0]  # the same head elsewhere in the scanner
    finer = image.affine.copy()
    finer[:3, :3] *= 0.75  # resampled to 3 mm
    upside_down = image.affine.copy()
    upside_down[:, 2] *= -1  # the header says the slices run the other way: the head is upside down
    upside_down[2, 3] = image.affine[2, 3] + (data.shape[2] - 1) * image.affine[2, 2]
    mask = ndimage.binary_dilation(data > np.percentile(data, 60), iterations=1)
    ct = np.where(mask, 40.0, -1000.0) + np.where(mask & ~ndimage.binary_erosion(mask, iterations=2), 900.0, 0.0)
    cases = {"moved": _variant(source, inputs / "moved.nii.gz", affine=moved),
             "resampled": _variant(source, inputs / "resampled.nii.gz",
                                   ndimage.zoom(data, 4 / 3, order=1), finer),
             "training": _variant(source, inputs / "training.nii.gz"),
             "upside_down": _variant(source, inputs / "upside_down.nii.gz", affine=upside_down),
             "ct": _variant(source, inputs / "ct.nii.gz", ct)}
    predictor = Predictor.from_checkpoint(run / "run")
    review = Review.for_predictor(predictor)
    records = predict_files(predictor, list(cases.values()), tmp_path / "out", progress=False, review=review)
    flags = {case["case"]: case["flags"] for case in review.write(records, tmp_path / "out")}
    for name in ("moved", "resampled", "training"):
        assert flags[name] == [], (name, flags[name])
    assert any(f.kind == "geometry" and "flipped" in f.detail for f in flags["upside_down"])
    assert any(f.kind == "intensity" for f in flags["ct"])
