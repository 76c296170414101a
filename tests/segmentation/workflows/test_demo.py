"""The demo dataset builder: MSD layout, geometry, labels, plausible deformations, determinism."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medseg_attn import demo_data as demo

TRAIN_SPACING = 4.0  # coarse grids keep the tests to seconds
TEST_SPACING = 3.0


def build(root: Path, **kwargs) -> Path:
    options = dict(train_cases=2, test_cases=1, seed=7, train_spacing=TRAIN_SPACING,
                   test_spacing=TEST_SPACING, progress=False)
    options.update(kwargs)
    return demo.build_demo_dataset(root, **options)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("demo"))


def load(path: Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Image]:
    image = nib.load(str(path))
    return np.asanyarray(image.dataobj), image.affine, image


def template_label_on(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """Oracle: the undeformed template's label resampled (linear, scipy) onto a grid, argmax there."""
    _, gm, wm, template_affine = demo.load_template()
    voxel_map = np.linalg.inv(template_affine) @ affine  # output voxel -> template voxel
    maps = [ndimage.affine_transform(p, voxel_map[:3, :3], voxel_map[:3, 3], output_shape=shape, order=1)
            for p in (gm, wm)]
    background = np.clip(1 - maps[0] - maps[1], 0, None)
    return np.argmax(np.stack([background, *maps]), axis=0).astype(np.uint8)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_template_is_packaged_real_mri() -> None:
    t1, gm, wm, affine = demo.load_template()
    assert t1.shape == gm.shape == wm.shape and t1.ndim == 3
    assert t1.dtype == gm.dtype == wm.dtype == np.float32
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    assert np.allclose(nib.affines.voxel_sizes(affine), 1.0)
    assert 0.0 <= gm.min() and gm.max() <= 1.0 and 0.0 <= wm.min() and wm.max() <= 1.0
    assert (gm + wm).max() <= 1.0 + 1.0 / 255 * 2
    assert t1.max() > 200 and (t1 > 0).mean() > 0.2  # a real brain, not an empty volume
    t1[:] = 0  # a copy: the cache is untouched
    assert demo.load_template()[0].max() > 200
    notice = resources.files("medseg_attn.resources").joinpath("mni152_NOTICE.txt").read_text()
    assert notice.count("McGill") >= 2


def test_msd_layout(dataset: Path) -> None:
    root = dataset.parent
    spec = json.loads(dataset.read_text())
    assert spec["name"] == "MNI152Brain"
    assert spec["modality"] == {"0": "MRI"}
    assert spec["labels"] == {"0": "background", "1": "grey_matter", "2": "white_matter"}
    assert spec["numTraining"] == len(spec["training"]) == 2
    assert spec["numTest"] == len(spec["test"]) == 1
    assert all(spec[key] for key in ("description", "reference", "licence"))
    assert spec["training"][0] == {"image": "./imagesTr/brain_000.nii.gz", "label": "./labelsTr/brain_000.nii.gz"}
    assert spec["test"] == ["./imagesTs/brain_100.nii.gz"]
    for item in spec["training"]:
        assert (root / item["image"]).is_file() and (root / item["label"]).is_file()
    for image in spec["test"]:
        assert (root / image).is_file() and (root / image.replace("imagesTs", "labelsTs")).is_file()
    assert not [p for p in root.rglob(".*")], "temporary files left behind"


def cases(dataset: Path) -> list[tuple[str, Path, Path]]:
    root = dataset.parent
    spec = json.loads(dataset.read_text())
    found = [("train", root / item["image"], root / item["label"]) for item in spec["training"]]
    found += [("test", root / image, root / image.replace("imagesTs", "labelsTs")) for image in spec["test"]]
    return found


def test_geometry_dtypes_and_labels(dataset: Path) -> None:
    for split, image_path, label_path in cases(dataset):
        image, image_affine, image_nifti = load(image_path)
        label, label_affine, label_nifti = load(label_path)
        assert image.shape == label.shape and image.ndim == 3
        np.testing.assert_allclose(image_affine, label_affine)
        assert image_nifti.get_data_dtype() == np.int16 and image.dtype == np.int16
        assert label_nifti.get_data_dtype() == np.uint8 and label.dtype == np.uint8
        assert nib.aff2axcodes(image_affine) == ("R", "A", "S")
        spacing = TRAIN_SPACING if split == "train" else TEST_SPACING
        np.testing.assert_allclose(nib.affines.voxel_sizes(image_affine), spacing)
        np.testing.assert_allclose(image_nifti.header.get_zooms(), spacing)
        assert set(np.unique(label).tolist()) == {0, 1, 2}, label_path
        assert np.isfinite(image).all() and image.min() >= 0
        brain = image[label > 0].astype(np.float64)
        assert 200 < np.median(brain) < 1500, image_path  # a realistic MRI range
        assert brain.mean() > 3 * image[label == 0].mean()  # the brain is brighter than background noise


def test_identity_resampling_matches_template() -> None:
    """Without deformation or appearance changes, the 1 mm case is the template (checks axes and affines)."""
    t1, _, _, affine = demo.load_template()
    case = demo.generate_case(0, 1.0, deform=False, appearance=False)
    np.testing.assert_allclose(case.affine, affine, atol=1e-6)
    assert np.abs(case.image.astype(np.float64) - np.round(t1 / 255 * 1000)).max() <= 1
    assert (case.label == template_label_on(t1.shape, affine)).mean() > 0.999
    coarse = demo.generate_case(0, TEST_SPACING, deform=False, appearance=False)  # smoothed before sampling
    assert (coarse.label == template_label_on(coarse.label.shape, coarse.affine)).mean() > 0.9


def test_deformation_is_plausible_and_held_out_cases_are_new(tmp_path: Path) -> None:
    # one spacing for all cases, so held-out and training cases can be compared voxel by voxel
    spec_path = build(tmp_path, train_cases=3, test_cases=2, train_spacing=TEST_SPACING)
    found = cases(spec_path)
    labels = {path.name + split: load(label)[0] for split, path, label in found}
    shape, affine = labels[next(iter(labels))].shape, load(found[0][2])[1]
    template = template_label_on(shape, affine)
    for key, label in labels.items():
        for tissue in (1, 2):
            score = dice(label == tissue, template == tissue)
            assert 0.3 < score < 0.95, f"{key} tissue {tissue}: Dice {score:.3f} with the undeformed template"
    held_out = [label for key, label in labels.items() if key.endswith("test")]
    training = [label for key, label in labels.items() if key.endswith("train")]
    for test_label in held_out:
        for train_label in training:
            assert (test_label != train_label).mean() > 0.02
    assert (held_out[0] != held_out[1]).mean() > 0.02


def test_same_seed_gives_identical_files(dataset: Path, tmp_path: Path) -> None:
    again = build(tmp_path / "again")
    for original in sorted(dataset.parent.rglob("*")):
        if original.is_file():
            copy = again.parent / original.relative_to(dataset.parent)
            assert copy.read_bytes() == original.read_bytes(), original.name
    other = build(tmp_path / "other", seed=8)
    assert (other.parent / "imagesTr/brain_000.nii.gz").read_bytes() != (
        dataset.parent / "imagesTr/brain_000.nii.gz").read_bytes()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"train_spacing": 0.0}, "spacing=0.0"),
        ({"test_spacing": float("nan")}, "spacing=nan"),
        ({"train_cases": -1}, "train_cases=-1"),
        ({"test_cases": 1.5}, "test_cases=1.5"),
        ({"seed": -3}, "seed=-3"),
        ({"train_cases": 0, "test_cases": 0}, "nothing to build"),
    ],
)
def test_bad_arguments_raise_value_error(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build(tmp_path, **options)


def test_output_dir_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "dataset"
    target.write_text("not a folder")
    with pytest.raises(ValueError, match="not a folder"):
        build(target)


def test_demo_command_runs_end_to_end_on_a_tiny_budget(tmp_path: Path) -> None:
    """``medseg-attn demo`` (run_demo) through main(argv): data, a few seconds of training, prediction and
    evaluation at 1 mm, the report; a tiny network so it takes seconds, not minutes."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from cli_helpers import run

    result = run("-q", "demo", "--output", str(tmp_path / "demo"), "--minutes", "0.05",
                 "--train-cases", "2", "--test-cases", "1", "--stress-cases", "0",
                 "--set", "model.channels=[8,16,32]", "--set", "data.patch_size=[32,32,32]",
                 "--set", "train.steps_per_epoch=2", "--set", "train.val_interval=1")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert set(summary) == {"attention"}
    for variant in summary.values():
        assert {"grey_matter", "white_matter"} <= set(variant["classes"])
    report = (tmp_path / "demo" / "summary.md").read_text()
    assert "grey matter Dice" in report and (tmp_path / "demo" / "overlay.png").stat().st_size > 1000
    predictions = tmp_path / "demo" / "predictions"  # the predict command's own workflow: its reports too
    assert {"report.csv", "report.html", "run.json"} <= {p.name for p in predictions.iterdir()}
    assert json.loads((predictions / "run.json").read_text())["outcome"] == "ok"
