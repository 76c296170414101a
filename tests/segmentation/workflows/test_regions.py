"""Region-based training end to end through the CLI on the real brain MRI: a dataset.json whose labels are nested
regions (brain = grey + white matter ⊃ white matter) trains sigmoid outputs, predicts label maps painted in
regions_class_order (equal to nnU-Net's painting of the same probabilities), and leaves the tool as ONNX and as a
MONAI bundle that predict the same label maps."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cli_helpers import run, run_bundle_without_medseg_attn  # noqa: E402

from medseg_attn.demo_data import build_demo_dataset  # noqa: E402
from medseg_attn.segmentation.measures.regions import Regions  # noqa: E402

REGIONS = {"background": 0, "brain": [1, 2], "white_matter": 2}


@pytest.fixture(scope="module")
def region_run(tmp_path_factory) -> dict[str, Path]:
    """Four real-brain cases at 4 mm relabelled as regions, a run trained 40 steps through the CLI, a 3 mm case."""
    root = tmp_path_factory.mktemp("regions")
    dataset = build_demo_dataset(root / "data", train_cases=4, test_cases=1, seed=5, train_spacing=4.0,
                                 test_spacing=3.0, progress=False)
    spec = json.loads(Path(dataset).read_text())
    spec.update(labels=REGIONS, regions_class_order=[1, 2])  # the same label maps, read as regions
    Path(dataset).write_text(json.dumps(spec))
    result = run("-q", "train", "--data", str(dataset), "--output", str(root / "run"), "--epochs", "5",
                 "--set", "data.spacing=[4,4,4]", "--set", "data.patch_size=[32,32,32]",
                 "--set", "data.samples_per_case=1", "--set", "model.channels=[8,16,32]",
                 "--set", "train.steps_per_epoch=8", "--set", "train.batch_size=2", "--set", "train.lr=0.01",
                 "--set", "data.augmentation.enabled=false")
    assert result.returncode == 0, result.stderr
    images = Path(dataset).parent / "imagesTs"
    out = root / "torch"
    result = run("-q", "predict", "--model", str(root / "run"), "--input", str(images), "--output", str(out),
                 "--probabilities", "--uncertainty", "--precision", "fp32")
    assert result.returncode == 0, result.stderr
    return {"root": root, "run": root / "run", "images": images, "torch": out, "dataset": Path(dataset)}


def test_a_region_run_trains_sigmoid_regions_and_reports_each(region_run):
    from medseg_attn.training.checkpoint import load_checkpoint

    payload = load_checkpoint(region_run["run"] / "checkpoints" / "best.pt")
    regions = Regions.from_dict(payload["regions"])
    assert regions.names == ("brain", "white_matter") and regions.order == (1, 2)
    biases = [v for k, v in payload["model"].items() if k.startswith("head.") and k.endswith("bias")]
    assert [b.shape[0] for b in biases] == [2]  # one output per region, no background output
    history = (region_run["run"] / "history.csv").read_text().splitlines()
    assert "val_dice_brain" in history[0] and "val_dice_white_matter" in history[0]
    last = dict(zip(history[0].split(","), history[-1].split(","), strict=True))
    assert float(last["val_dice_brain"]) > 0.6, last  # a real brain mask after 40 steps


def test_predicted_label_maps_are_nnunets_painting_of_the_region_probabilities(region_run):
    labels_file = region_run["torch"] / "brain_100.nii.gz"
    labels = np.asarray(nib.load(labels_file).dataobj)
    probabilities = np.asarray(nib.load(str(labels_file).replace(".nii.gz", "_probabilities.nii.gz")).dataobj)
    probabilities = np.moveaxis(probabilities, -1, 0) if probabilities.shape[-1] == 2 else probabilities
    assert probabilities.shape[0] == 2  # one map per region
    painted = np.zeros(labels.shape, np.uint16)  # nnU-Net v2's rule, written out here
    for i, c in enumerate([1, 2]):
        painted[probabilities[i] > 0.5] = c
    assert (labels > 0).sum() > 1000
    assert np.mean(painted == labels) > 0.999  # equal up to float16/float32 storage of probabilities at 0.5
    uncertainty = np.asarray(nib.load(str(labels_file).replace(".nii.gz", "_uncertainty.nii.gz")).dataobj)
    assert 0 <= uncertainty.min() and uncertainty.max() <= 1 and uncertainty.max() > 0.1


def test_onnx_export_of_a_region_model_predicts_the_same_label_maps(region_run, tmp_path):
    model = tmp_path / "regions.onnx"
    assert run("-q", "export", "--model", str(region_run["run"]), "--format", "onnx", "--output",
               str(model)).returncode == 0
    result = run("-q", "predict", "--model", str(model), "--input", str(region_run["images"]), "--output",
                 str(tmp_path / "onnx"))
    assert result.returncode == 0, result.stderr
    for name in ("brain_100.nii.gz",):
        ours = np.asarray(nib.load(tmp_path / "onnx" / name).dataobj)
        theirs = np.asarray(nib.load(region_run["torch"] / name).dataobj)
        assert np.mean(ours == theirs) > 0.999


def test_a_region_bundle_paints_in_monai_without_medseg_attn(region_run, tmp_path):
    bundle = tmp_path / "bundle"
    assert run("-q", "export", "--model", str(region_run["run"]), "--format", "bundle", "--output",
               str(bundle)).returncode == 0
    result = run_bundle_without_medseg_attn(bundle, region_run["images"], tmp_path / "monai")
    assert result.returncode == 0, result.stderr[-2000:]
    expected = np.asarray(nib.load(region_run["torch"] / "brain_100.nii.gz").dataobj)
    labels = np.asarray(nib.load(tmp_path / "monai" / "brain_100.nii.gz").dataobj).squeeze()
    assert set(np.unique(labels)) <= {0, 1, 2}
    for value in (1, 2):
        a, b = labels == value, expected == value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.97, value


def test_fine_tuning_across_kinds_is_one_line(region_run, tmp_path):
    dataset = build_demo_dataset(tmp_path / "plain", train_cases=2, test_cases=0, seed=1, train_spacing=4.0,
                                 progress=False)
    result = run("-q", "train", "--data", str(dataset), "--output", str(tmp_path / "ft"), "--init-from",
                 str(region_run["run"]), "--epochs", "1", "--set", "model.channels=[8,16,32]")
    assert result.returncode == 2
    assert "is a region model (sigmoid outputs) and this run trains a class model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bad_region_datasets_are_one_line_before_any_work(region_run, tmp_path):
    spec = json.loads(region_run["dataset"].read_text())
    for order, expected in (([1, 5], "paints [5], which no region holds"),
                            (None, "need 'regions_class_order'")):
        bad = dict(spec, regions_class_order=order)
        path = region_run["dataset"].parent / "bad.json"
        path.write_text(json.dumps(bad))
        result = run("-q", "train", "--data", str(path), "--output", str(tmp_path / "bad"))
        assert result.returncode == 2 and expected in result.stderr, result.stderr
        assert not (tmp_path / "bad").exists()
    # a region listing a value that no label map holds (the maps hold 0, 1, 2): refused before training
    bad = dict(spec, labels={"background": 0, "brain": [1, 2], "white_matter": 2, "tumour": [3]},
               regions_class_order=[1, 2, 3])
    path = region_run["dataset"].parent / "bad.json"
    path.write_text(json.dumps(bad))
    result = run("-q", "train", "--data", str(path), "--output", str(tmp_path / "absent"), "--epochs", "1",
                 "--set", "data.spacing=[4,4,4]", "--set", "data.patch_size=[32,32,32]",
                 "--set", "model.channels=[8,16,32]")
    assert result.returncode == 2, result.stderr
    assert "region 'tumour' lists value(s) [3], which no training label map holds" in result.stderr, result.stderr
    assert not (tmp_path / "absent" / "checkpoints" / "last.pt").exists()
