"""Fingerprint -> plan on small real volumes (MNI152 brain MRI), config overrides, and the plan's round trip
through a real training run's checkpoint into the Predictor."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg_attn.config import load_config
from medseg_attn.demo_data import build_demo_dataset
from medseg_attn.segmentation.data.datasets import load_dataset, split_cases
from medseg_attn.segmentation.data.planning import _target_spacing, dataset_fingerprint, describe_plan, make_plan
from medseg_attn.segmentation.inference.predictor import Predictor
from medseg_attn.segmentation.train import train
from medseg_attn.segmentation.data.transforms import Preprocessing
from medseg_attn.training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def brain(tmp_path_factory):
    """Two real-brain training cases at 4 mm and one held-out case at 4 mm."""
    root = tmp_path_factory.mktemp("brain_plan")
    return build_demo_dataset(root, train_cases=2, test_cases=1, seed=5, train_spacing=4.0, test_spacing=4.0,
                              progress=False)


def test_fingerprint_and_plan_of_real_brains(brain):
    dataset = load_dataset(brain)
    fingerprint = dataset_fingerprint(dataset.training, dataset.modality)
    assert [c["spacing"] for c in fingerprint["cases"]] == [[4.0, 4.0, 4.0]] * 2
    for case in fingerprint["cases"]:
        assert 0.25 < case["body_fraction"] < 0.6  # the head, not the noisy background
        assert 0.0 <= case["crop_fraction"] < 0.5
        assert case["body_intensity"]["mean"] > 100  # T1 brain intensities, not the noise
    config = load_config(overrides=[f"data.dataset={brain}", "model.channels=[8,16,32,64]"])
    plan = make_plan(fingerprint, config, "cpu")
    resolved = plan["resolved"]
    assert resolved["spacing"] == [4.0, 4.0, 4.0] and plan["source"]["spacing"] == "plan"
    assert all(side % 8 == 0 for side in resolved["patch_size"])  # divisor 2 * 2**3
    assert 2 * np.prod(resolved["patch_size"]) <= plan["rules"]["voxel_budget"] or min(resolved["patch_size"]) == 8
    assert resolved["intensity"] == "zscore" and resolved["normalisation_mask"] is True
    assert resolved["batch_size"] >= 2
    text = describe_plan(plan)
    assert "normalisation_mask: True" in text and "spacing: [4.0, 4.0, 4.0]" in text
    json.dumps(plan, allow_nan=False)  # plan.json is plain JSON

    overridden = make_plan(fingerprint, load_config(overrides=[
        f"data.dataset={brain}", "model.channels=[8,16,32,64]", "data.patch_size=[16,24,32]", "train.batch_size=3", "data.normalisation_mask=false",
        "data.spacing=[5,5,5]", "data.intensity=none"]), "cpu")
    assert overridden["resolved"] == {"spacing": [5.0, 5.0, 5.0], "patch_size": [16, 24, 32], "batch_size": 3,
                                      "intensity": "none", "normalisation_mask": False}
    assert set(overridden["source"].values()) == {"config"}


def test_anisotropic_spacing_takes_the_finer_percentile_on_the_coarse_axis():
    spacings = np.array([[0.8, 0.8, 5.0]] * 8 + [[0.8, 0.8, 2.0]] * 2)
    target, rule = _target_spacing(spacings)
    assert target[:2] == [0.8, 0.8] and target[2] == pytest.approx(2.0) and "anisotropy" in rule
    assert _target_spacing(np.array([[1.0, 1.0, 2.0]] * 3))[0] == [1.0, 1.0, 2.0]


def _case(shape, spacing, cropped):
    return {"case": "c", "shape": shape, "spacing": spacing, "body_fraction": 0.4, "cropped_shape": cropped,
            "crop_fraction": 0.0}


def test_spacing_is_coarsened_until_the_patch_covers_a_quarter_of_the_case():
    config = load_config(overrides=["data.dataset=x"])
    statistics = {"mean": 0.0, "std": 1.0, "p0.5": -1.0, "p99.5": 1.0}
    # one abdominal CT series, 20 slices of 2 mm: only the in-plane axes grow, the slab is already spanned
    series = {"modality": "ct", "cases": [_case([512, 512, 20], [0.9766, 0.9766, 2.0], [502, 261, 20])],
              "label_intensity": statistics}
    plan = make_plan(series, config, "cpu")
    spacing, patch = plan["resolved"]["spacing"], plan["resolved"]["patch_size"]
    assert 1.8 < spacing[0] == spacing[1] <= 2 * 0.9766 and spacing[2] == 2.0
    shape = np.array([502, 261, 20]) * np.array([0.9766, 0.9766, 2.0]) / np.array(spacing)
    assert np.prod(np.minimum(patch, shape)) / np.prod(shape) >= 0.24
    assert "coarsened" in plan["rules"]["spacing"]
    # anisotropic 0.8 x 0.8 x 5 mm: the 5 mm axis never grows, the in-plane axes stop at 2x
    thick = {"modality": "ct", "cases": [_case([512, 512, 90], [0.8, 0.8, 5.0], [450, 330, 90])],
             "label_intensity": statistics}
    assert make_plan(thick, config, "cpu")["resolved"]["spacing"] == [1.6, 1.6, 5.0]
    # a case the patch already covers keeps its median spacing (and a GPU budget coarsens less)
    small = {"modality": "mr", "cases": [_case([36, 50, 35], [1.0, 1.0, 1.0], [36, 50, 35])]}
    assert make_plan(small, config, "cpu")["resolved"]["spacing"] == [1.0, 1.0, 1.0]
    assert make_plan(thick, config, "cuda")["resolved"]["spacing"][0] < 1.6
    # a spacing set in the config is kept, and the patch is planned on its grid
    fixed = make_plan(series, load_config(overrides=["data.dataset=x", "data.spacing=[0.9766,0.9766,2.0]"]), "cpu")
    assert fixed["resolved"]["spacing"] == [0.9766, 0.9766, 2.0] and fixed["source"]["spacing"] == "config"


def test_few_cases_train_on_every_case():
    cases = [{"case": f"c{i}"} for i in range(3)]
    for count in (1, 2):
        train_cases, validation = split_cases(cases[:count], 0.2, 0, 0, seed=0)
        assert len(train_cases) == count and validation == []
    train_cases, validation = split_cases(cases, 0.2, 0, 0, seed=0)
    assert len(train_cases) == 2 and len(validation) == 1


def test_plan_round_trips_through_the_checkpoint(brain, tmp_path, caplog):
    config = load_config(overrides=[
        f"data.dataset={brain}", "model.channels=[8,16,32,64]", "train.max_epochs=1", "train.steps_per_epoch=2",
        "train.warmup_steps=0", "data.augmentation.enabled=true", "train.log_images=false",
        "train.batch_size=4", "data.samples_per_case=1"])
    with caplog.at_level("INFO"):
        train(config, tmp_path / "run", progress=False)
    assert "no validation" in caplog.text  # two cases: both train, and the log says so
    assert "2 patches per case visit" in caplog.text  # 2 cases x 1 patch would not fill a batch of 4
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    payload = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    for key in ("planned", "resolved", "source", "rules"):
        assert payload["plan"][key] == plan[key]
    assert payload["config"]["data"]["patch_size"] == plan["resolved"]["patch_size"]
    assert payload["config"]["train"]["batch_size"] == plan["resolved"]["batch_size"] == 4
    assert payload["config"]["data"]["samples_per_case"] == 2
    saved = Preprocessing.from_dict(payload["preprocessing"])
    assert saved == Preprocessing.from_plan(load_config(overrides=[f"data.dataset={brain}"]).data, plan)
    assert saved.use_mask and saved.foreground == "body" and saved.spacing == (4.0, 4.0, 4.0)
    predictor = Predictor.from_checkpoint(tmp_path / "run")
    assert predictor.prep == saved and list(predictor.patch_size) == plan["resolved"]["patch_size"]
    root = brain.parent
    prediction = predictor.predict(root / "imagesTs" / "brain_100.nii.gz")
    assert prediction.labels.shape == (39, 48, 40)
