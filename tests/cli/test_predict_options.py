"""Every ``predict`` option through ``main(argv)`` on a tiny trained model, each against an oracle where one
exists: probabilities vs the label map, a 4D volume vs the same volume as a 3D file, a second run vs the first."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg_attn.demo_data import build_demo_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_helpers import run  # noqa: E402
from dicom_factory import write_series  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, one test image) of a model trained for two steps."""
    root = tmp_path_factory.mktemp("options")
    dataset = build_demo_dataset(root / "data", train_cases=2, test_cases=1, seed=7, train_spacing=4.0,
                                 test_spacing=4.0, progress=False)
    result = run("-q", "train", "--data", str(dataset), "--output", str(root / "run"), "--epochs", "1",
                 "--set", "data.patch_size=[32,32,32]", "--set", "model.channels=[8,16,32]",
                 "--set", "train.steps_per_epoch=2", "--set", "data.validation_fraction=0")
    assert result.returncode == 0, result.stderr
    return root / "run", sorted((dataset.parent / "imagesTs").iterdir())[0]


def predict(model_dir: Path, inputs, output: Path, *options: str):
    inputs = inputs if isinstance(inputs, list) else [inputs]
    return run("-q", "predict", "--model", str(model_dir), "--input", *map(str, inputs), "--output", str(output),
               "--device", "cpu", *options)


def data(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def test_probabilities_tta_overlap_and_precision(model, tmp_path):
    run_dir, image = model
    name = image.name[:-len(".nii.gz")]
    assert predict(run_dir, image, tmp_path / "a", "--probabilities", "--precision", "fp32").returncode == 0
    labels, probabilities = data(tmp_path / "a" / image.name), data(tmp_path / "a" / f"{name}_probabilities.nii.gz")
    assert probabilities.shape == (*labels.shape, 3)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=0.02)  # stored as 8-bit steps of 1/255
    ordered = np.sort(probabilities, -1)
    clear = ordered[..., -1] - ordered[..., -2] > 0.02  # the label map is the argmax of the probabilities
    np.testing.assert_array_equal(labels[clear], probabilities.argmax(-1)[clear])

    assert predict(run_dir, image, tmp_path / "b", "--probabilities", "--precision", "fp32", "--tta",
                   "--overlap", "0").returncode == 0
    flipped = data(tmp_path / "b" / f"{name}_probabilities.nii.gz")
    assert flipped.shape == probabilities.shape and np.abs(flipped - probabilities).max() > 0.05  # took effect
    np.testing.assert_allclose(flipped.sum(-1), 1.0, atol=0.02)

    assert predict(run_dir, image, tmp_path / "c", "--probabilities", "--precision", "bf16").returncode == 0
    half = data(tmp_path / "c" / f"{name}_probabilities.nii.gz")
    assert np.abs(half - probabilities).mean() < 0.02  # bf16 arithmetic, the same answer
    assert (data(tmp_path / "c" / image.name) == labels).mean() > 0.97


def test_overwrite_redoes_a_case_whose_output_exists(model, tmp_path):
    run_dir, image = model
    assert predict(run_dir, image, tmp_path / "out").returncode == 0
    output = tmp_path / "out" / image.name
    first = data(output)
    stale = nib.load(str(output))
    nib.save(nib.Nifti1Image(np.zeros_like(first), stale.affine), str(output))  # an old, wrong output
    assert predict(run_dir, image, tmp_path / "out").returncode == 0
    assert not data(output).any()  # skipped: the output exists
    assert predict(run_dir, image, tmp_path / "out", "--overwrite").returncode == 0
    np.testing.assert_array_equal(data(output), first)


def test_volume_index_predicts_that_volume_as_a_3d_file_would(model, tmp_path):
    run_dir, image = model
    source = nib.load(str(image))
    volume = np.asarray(source.dataobj, dtype=np.float32)
    four = np.stack([np.zeros_like(volume), volume, volume[::-1]], -1)
    nib.save(nib.Nifti1Image(four, source.affine), str(tmp_path / "series4d.nii.gz"))
    result = predict(run_dir, tmp_path / "series4d.nii.gz", tmp_path / "none")
    assert result.returncode == 1 and "choose one with --volume-index" in result.stderr
    assert predict(run_dir, tmp_path / "series4d.nii.gz", tmp_path / "four", "--volume-index", "1").returncode == 0
    assert predict(run_dir, image, tmp_path / "three").returncode == 0
    np.testing.assert_array_equal(data(tmp_path / "four" / "series4d.nii.gz"), data(tmp_path / "three" / image.name))


def test_series_uid_and_resample_uneven_on_dicom_folders(model, tmp_path):
    run_dir, image = model
    volume = np.asarray(nib.load(str(image)).dataobj, dtype=np.float64)[:, :, :24] * 1000
    write_series(tmp_path / "two", volume[:, :, :12], (4.0, 4.0, 4.0), series_uid="1.2.3.4.1", series_number=1)
    write_series(tmp_path / "two", volume[:, :, :20], (4.0, 4.0, 4.0), series_uid="1.2.3.4.2", series_number=2,
                 names=[f"other_{k:03d}.dcm" for k in range(20)])
    assert predict(run_dir, tmp_path / "two", tmp_path / "both").returncode == 0  # each series a case
    assert sorted(nib.load(str(p)).shape[2] for p in (tmp_path / "both").glob("*.nii.gz")) == [12, 20]
    assert predict(run_dir, tmp_path / "two", tmp_path / "chosen", "--series-uid", "1.2.3.4.2").returncode == 0
    (written,) = (tmp_path / "chosen").glob("*.nii.gz")
    assert nib.load(str(written)).shape == (volume.shape[0], volume.shape[1], 20)  # the series asked for

    write_series(tmp_path / "gap", volume, (4.0, 4.0, 4.0), skip=[10])
    result = predict(run_dir, tmp_path / "gap", tmp_path / "refused")
    assert result.returncode == 1 and "1 slice(s) missing" in result.stderr and "--resample-uneven" in result.stderr
    assert predict(run_dir, tmp_path / "gap", tmp_path / "even", "--resample-uneven").returncode == 0
    (written,) = (tmp_path / "even").glob("*.nii.gz")
    assert nib.load(str(written)).shape[:2] == volume.shape[:2]
