"""Fingerprint -> plan on small real volumes (MNI152 brain MRI), config overrides, and the plan's round trip
through a real training run's checkpoint into the Predictor."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from medseg_attn.config import load_config
from medseg_attn.demo_data import build_demo_dataset
from medseg_attn.io.manifest import json_sha256
from medseg_attn.segmentation.data.cache import entry_key
from medseg_attn.segmentation.data.datasets import load_dataset, split_cases
from medseg_attn.segmentation.data.planning import (
    IntensityStats,
    Plan,
    PlanValues,
    _target_spacing,
    dataset_fingerprint,
    describe_plan,
    make_plan,
    save_plan,
)
from medseg_attn.segmentation.data.transforms import Preprocessing
from medseg_attn.segmentation.inference.predictor import Predictor
from medseg_attn.segmentation.workflows.train import train
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
    resolved = plan.resolved
    assert resolved.spacing == (4.0, 4.0, 4.0) and plan.source.spacing == "plan"
    assert all(side % 8 == 0 for side in resolved.patch_size)  # divisor 2 * 2**3
    assert 2 * np.prod(resolved.patch_size) <= plan.rules.voxel_budget or min(resolved.patch_size) == 8
    assert resolved.intensity == "zscore" and resolved.normalisation_mask is True
    assert resolved.batch_size >= 2
    text = describe_plan(plan)
    assert "normalisation_mask: True" in text and "spacing: [4.0, 4.0, 4.0]" in text
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict(), allow_nan=False))) == plan  # plain JSON, and back

    overridden = make_plan(fingerprint, load_config(overrides=[
        f"data.dataset={brain}", "model.channels=[8,16,32,64]", "data.patch_size=[16,24,32]", "train.batch_size=3",
        "data.normalisation_mask=false",
        "data.spacing=[5,5,5]", "data.intensity=none"]), "cpu")
    assert overridden.resolved == PlanValues((5.0, 5.0, 5.0), (16, 24, 32), 3, "none", False)
    assert set(overridden.source.to_dict().values()) == {"config"}


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
    spacing, patch = plan.resolved.spacing, plan.resolved.patch_size
    assert 1.8 < spacing[0] == spacing[1] <= 2 * 0.9766 and spacing[2] == 2.0
    shape = np.array([502, 261, 20]) * np.array([0.9766, 0.9766, 2.0]) / np.array(spacing)
    assert np.prod(np.minimum(patch, shape)) / np.prod(shape) >= 0.24
    assert "coarsened" in plan.rules.spacing
    # anisotropic 0.8 x 0.8 x 5 mm: the 5 mm axis never grows, the in-plane axes stop at 2x
    thick = {"modality": "ct", "cases": [_case([512, 512, 90], [0.8, 0.8, 5.0], [450, 330, 90])],
             "label_intensity": statistics}
    assert make_plan(thick, config, "cpu").resolved.spacing == (1.6, 1.6, 5.0)
    # a case the patch already covers keeps its median spacing (and a GPU budget coarsens less)
    small = {"modality": "mr", "cases": [_case([36, 50, 35], [1.0, 1.0, 1.0], [36, 50, 35])]}
    assert make_plan(small, config, "cpu").resolved.spacing == (1.0, 1.0, 1.0)
    assert make_plan(thick, config, "cuda").resolved.spacing[0] < 1.6
    # a spacing set in the config is kept, and the patch is planned on its grid
    fixed = make_plan(series, load_config(overrides=["data.dataset=x", "data.spacing=[0.9766,0.9766,2.0]"]), "cpu")
    assert fixed.resolved.spacing == (0.9766, 0.9766, 2.0) and fixed.source.spacing == "config"


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
    assert saved == Preprocessing.from_plan(load_config(overrides=[f"data.dataset={brain}"]).data, Plan.from_dict(plan))
    assert Plan.from_dict(payload["plan"]).checkpoint_dict() == payload["plan"]
    assert saved.use_mask and saved.foreground == "body" and saved.spacing == (4.0, 4.0, 4.0)
    predictor = Predictor.from_checkpoint(tmp_path / "run")
    assert predictor.prep == saved and list(predictor.patch_size) == plan["resolved"]["patch_size"]
    root = brain.parent
    prediction = predictor.predict(root / "imagesTs" / "brain_100.nii.gz")
    assert prediction.labels.shape == (39, 48, 40)


def _ct_series() -> dict:
    """Two CT series (the fingerprint records of the planner's inputs) with labelled-voxel statistics."""
    cases = [_case([512, 512, 20], [0.9766, 0.9766, 2.0], [502, 261, 20]) | {"case": "a", "crop_fraction": 0.1},
             _case([512, 512, 24], [0.8, 0.8, 2.5], [480, 250, 24]) | {"case": "b", "body_fraction": 0.5,
                                                                         "crop_fraction": 0.2}]
    return {"modality": "ct", "cases": cases, "label_intensity": {"mean": 80.5, "std": 40.25, "p0.5": -20.0,
                                                                  "p99.5": 180.0}}


def test_plan_files_and_cache_keys_are_those_of_the_plan_as_a_dict(tmp_path):
    """plan.json, the checkpoint's plan and the preprocessing the cache keys hash are pinned to what the dict plan
    (before the typed records) wrote for the same inputs: same keys, same order, same values, same checksums."""
    series = _ct_series()
    config = load_config(overrides=["data.dataset=x"])
    plan = make_plan(series, config, "cpu")
    values = {"spacing": [1.7531, 1.7531, 2.25], "patch_size": [128, 64, 32], "batch_size": 2, "intensity": "ct",
              "normalisation_mask": True}
    expected = {  # built as make_plan built its dict
        "dataset": "x", "modality": "ct", "cases": 2, "device": "cpu",
        "rules": {"spacing": "median of the training cases; coarsened from [0.8883, 0.8883, 2.25] so that the patch "
                             "covers 25% of the median case (target 25%, at most 2x)",
                  "network_divisor": 32, "voxel_budget": 524288, "median_body_fraction": 0.45,
                  "mask_when_body_below": 0.8, "median_cropped_shape": [249.3, 129.7, 22.2]},
        "planned": values, "resolved": values, "source": dict.fromkeys(values, "plan"),
        "ct_statistics": series["label_intensity"], "fingerprint": series}
    written = json.loads(save_plan(plan, tmp_path / "plan.json").read_text())
    assert written == expected and list(written) == list(expected)
    assert [list(written[key]) for key in ("rules", "resolved", "ct_statistics")] == [
        list(expected[key]) for key in ("rules", "resolved", "ct_statistics")]
    text = (tmp_path / "plan.json").read_bytes()
    assert hashlib.sha256(text).hexdigest() == "fa1fc1abd17d1f01835e082008474503c3f9d02b7bd02f23c7fa35eefd8ecd5c"
    stored = plan.checkpoint_dict()  # payload["plan"]; run.json keeps its checksum
    assert list(stored) == ["planned", "resolved", "source", "rules", "ct_statistics"]
    assert json_sha256(stored) == "4cc5e27cc06e1e61d9ed009cd65c733ebf2a6286e5b6ac9513761c0b5b8b0064"
    assert json_sha256(stored) == json_sha256({key: expected[key] for key in stored})
    # the case cache key hashes the preprocessing the plan resolves to
    prep = Preprocessing.from_plan(config.data, plan).to_dict()
    assert prep == {"spacing": [1.7531, 1.7531, 2.25], "orientation": "RAS", "intensity": "ct",
                    "ct_window": [-1000.0, 1000.0], "crop_foreground": True, "spatial_dims": 3, "foreground": "ct_body",
                    "use_mask": True, "ct_clip": [-20.0, 180.0], "ct_mean": 80.5, "ct_std": 40.25}
    image = tmp_path / "a.nii.gz"
    image.write_bytes(b"x")
    assert entry_key({"image": str(image)}, ["image"], preprocessing=prep) == entry_key(
        {"image": str(image)}, ["image"], preprocessing=Preprocessing.from_plan(config.data, Plan.from_dict(
            expected)).to_dict())
    assert describe_plan(plan).splitlines()[1:3] == ["  spacing: [1.7531, 1.7531, 2.25]", "  patch_size: [128, 64, 32]"]


def test_plan_reads_back_plan_json_and_checkpoints_of_every_version():
    plan = make_plan(_ct_series(), load_config(overrides=["data.dataset=x"]), "cpu")
    assert Plan.from_dict(plan.to_dict()) == plan
    assert plan.ct_statistics == IntensityStats(80.5, 40.25, -20.0, 180.0)
    stored = Plan.from_dict(plan.checkpoint_dict(), "best.pt")  # a checkpoint keeps only part of the plan
    assert stored.checkpoint_dict() == plan.checkpoint_dict() and stored.dataset is None and stored.fingerprint is None
    old = plan.checkpoint_dict()  # the first plans named the median shape "..._at_target"
    old["rules"] = {("median_cropped_shape_at_target" if k == "median_cropped_shape" else k): v
                    for k, v in old["rules"].items()}
    assert Plan.from_dict(old).rules == plan.rules
    with pytest.raises(ValueError, match=r"^run/plan.json: unknown key 'spacing_mm' \(known: dataset, modality"):
        Plan.from_dict(plan.to_dict() | {"spacing_mm": [1.0]}, "run/plan.json")
    with pytest.raises(ValueError, match=r"^best.pt: resolved: unknown key 'patch'"):
        Plan.from_dict(plan.checkpoint_dict() | {"resolved": plan.resolved.to_dict() | {"patch": [8]}}, "best.pt")
    with pytest.raises(ValueError, match=r"^plan: missing key 'source'"):
        Plan.from_dict({key: value for key, value in plan.to_dict().items() if key != "source"})
    with pytest.raises(ValueError, match=r"^plan: ct_statistics: missing key 'p99.5'"):
        Plan.from_dict(plan.to_dict() | {"ct_statistics": {"mean": 0.0, "std": 1.0, "p0.5": 0.0}})
