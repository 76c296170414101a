"""The lesion demo: its dataset (two channels, white-matter lesions, nnU-Net v2 regions) and `demo --task lesions`
end to end on a tiny budget."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cli_helpers import run  # noqa: E402

from medseg_attn.errors import UserError  # noqa: E402
from medseg_attn.lesion_data import build_lesion_dataset, generate_lesion_case  # noqa: E402
from medseg_attn.segmentation.data.datasets import load_dataset  # noqa: E402


@pytest.fixture(scope="module")
def lesion_dataset(tmp_path_factory) -> Path:
    return build_lesion_dataset(tmp_path_factory.mktemp("lesions"), train_cases=3, test_cases=1, seed=2,
                                train_spacing=3.0, test_spacing=3.0, progress=False)


def test_the_dataset_is_nnunet_v2_with_regions_and_two_channels(lesion_dataset):
    root = lesion_dataset.parent
    assert sorted(p.name for p in (root / "imagesTr").iterdir())[:2] == ["lesion_000_0000.nii.gz",
                                                                          "lesion_000_0001.nii.gz"]
    spec = json.loads(lesion_dataset.read_text())
    assert spec["channel_names"] == {"0": "T1", "1": "FLAIR"} and spec["regions_class_order"] == [1, 2, 3]
    dataset = load_dataset(lesion_dataset)  # read as the training command reads it
    assert dataset.channels == 2 and dataset.lesion_structures == ("lesion",)
    assert dataset.regions.names == ("grey_matter", "white_matter", "lesion")
    assert dataset.regions.values == ((1,), (2, 3), (3,)) and len(dataset.training) == 3
    assert (root / "imagesTs" / "lesion_100_0001.nii.gz").is_file()
    assert (root / "labelsTs" / "lesion_100.nii.gz").is_file()


def test_lesions_sit_in_white_matter_with_their_contrasts():
    case = generate_lesion_case(seed=4, spacing=2.0)
    t1, flair = case.images.astype(np.float32)
    label = case.label
    lesion, white, grey = label == 3, label == 2, label == 1
    assert lesion.sum() > 0 and case.lesions >= 1
    # every lesion borders normal-appearing white matter (drawn inside it)
    components, count = ndimage.label(lesion, np.ones((3, 3, 3)))
    assert 1 <= count <= 10
    for index in range(1, count + 1):
        assert (ndimage.binary_dilation(components == index, np.ones((3, 3, 3))) & white).any(), index
    # FLAIR: lesions brightest, grey above white matter; T1: lesions darker than white matter
    assert flair[lesion].mean() > flair[grey].mean() > flair[white].mean()
    assert t1[lesion].mean() < t1[white].mean()
    again = generate_lesion_case(seed=4, spacing=2.0)
    assert np.array_equal(again.images, case.images) and np.array_equal(again.label, case.label)


def test_bad_arguments_are_one_line(tmp_path):
    with pytest.raises(UserError, match="train_cases"):
        build_lesion_dataset(tmp_path, train_cases=-1, progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        build_lesion_dataset(tmp_path / "file", train_cases=1, progress=False)


def test_lesion_demo_command_runs_end_to_end_on_a_tiny_budget(tmp_path):
    result = run("-q", "demo", "--task", "lesions", "--output", str(tmp_path / "demo"), "--minutes", "0.05",
                 "--train-cases", "2", "--test-cases", "1", "--set", "model.channels=[8,16,32]",
                 "--set", "data.patch_size=[32,32,32]", "--set", "train.steps_per_epoch=2",
                 "--set", "train.val_interval=1")
    assert result.returncode == 0, result.stderr
    demo = tmp_path / "demo"
    summary = json.loads((demo / "summary.json").read_text())
    assert set(summary) == {"attention"}
    numbers = summary["attention"]
    assert set(numbers["region_dice"]) == {"grey_matter", "white_matter", "lesion"}
    assert 0 <= numbers["lesion_f1"] <= 1 and numbers["lesions"]["reference_lesions"] >= 1
    report = (demo / "summary.md").read_text()
    assert "lesion F1" in report and "lesion-wise Dice" in report
    evaluation = demo / "evaluation"
    assert {"lesions.csv", "lesion_pairs.csv", "metrics.csv", "summary.json"} <= {p.name for p in evaluation.iterdir()}
    # the painted label maps hold only the dataset's values, on the held-out case's own grid
    prediction = nib.load(demo / "predictions" / "lesion_100.nii.gz")
    reference = nib.load(demo / "data" / "labelsTs" / "lesion_100.nii.gz")
    assert prediction.shape == reference.shape and np.allclose(prediction.affine, reference.affine)
    assert set(np.unique(np.asarray(prediction.dataobj))) <= {0, 1, 2, 3}
