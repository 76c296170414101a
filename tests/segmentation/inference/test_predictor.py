"""Prediction lands on each input's exact grid: affine and shape equal, labels on the right voxels.

An oracle network that reads the class straight off the intensity (image = 100 * label) isolates the geometry:
any orientation, spacing or crop mistake in preprocessing or in the way back shows up as lost Dice.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg_attn.config import InferenceConfig
from medseg_attn.segmentation.data.transforms import Preprocessing
from medseg_attn.segmentation.inference.predictor import Predictor
from medseg_attn.segmentation.inference.resample import resample_to_grid
from medseg_attn.segmentation.workflows.batch import predict_files

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from oracles import IntensityOracle  # noqa: E402


def _phantom(shape=(60, 72, 50)) -> np.ndarray:
    """Nested ellipsoids: class 2 core, class 1 shell (thin structures suffer first from bad geometry)."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    radius = np.sqrt(((grid - np.array([0.15, -0.1, 0.05])[:, None, None, None]) ** 2 /
                      np.array([0.7, 0.55, 0.6])[:, None, None, None] ** 2).sum(0))
    labels = np.zeros(shape, np.uint8)
    labels[radius < 1.0] = 1
    labels[radius < 0.7] = 2
    return labels


def _dice(a: np.ndarray, b: np.ndarray, k: int) -> float:
    return 2 * np.sum((a == k) & (b == k)) / max(1, np.sum(a == k) + np.sum(b == k))


def _write(path, labels, affine):
    nib.save(nib.Nifti1Image((labels * 100).astype(np.int16), affine), str(path))
    return path


def _variants(tmp_path):
    labels = _phantom()
    ras = np.diag([1.0, 1.0, 1.0, 1.0])
    ras[:3, 3] = [-30, -40, -20]
    # LPS: first two axes reversed in storage, the affine says so
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [labels.shape[0] - 1, labels.shape[1] - 1]
    lps = ras @ flip
    # anisotropic: 1 x 1 x 3 mm, every third slice
    aniso = ras @ np.diag([1.0, 1.0, 3.0, 1.0])
    # oblique: rotated 25 degrees about z and permuted axes (z, x, y) in storage
    angle = np.deg2rad(25)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0, 0], [np.sin(angle), np.cos(angle), 0, 0],
                         [0, 0, 1, 0], [0, 0, 0, 1]])
    permute = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])
    oblique = rotation @ ras @ permute
    return {
        "ras": (labels, ras),
        "lps": (labels[::-1, ::-1, :].copy(), lps),
        "aniso": (labels[:, :, ::3].copy(), aniso),
        "oblique": (np.transpose(labels, (2, 0, 1)).copy(), oblique),
    }


@pytest.fixture()
def predictor():
    prep = Preprocessing(spacing=(2.0, 2.0, 2.0), orientation="RAS", intensity="none", ct_window=(0, 1),
                         crop_foreground=True, spatial_dims=3)
    return Predictor(IntensityOracle(), prep, {0: "bg", 1: "shell", 2: "core"}, (32, 32, 32),
                     InferenceConfig(overlap=0.25), "cpu")


def test_outputs_keep_input_geometry_and_labels(tmp_path, predictor):
    inputs = tmp_path / "in"
    inputs.mkdir()
    paths = {name: _write(inputs / f"{name}.nii.gz", labels, affine)
             for name, (labels, affine) in _variants(tmp_path).items()}
    records = predict_files(predictor, list(paths.values()), tmp_path / "out", probabilities=True, progress=False)
    assert [r["status"] for r in records] == ["ok"] * 4
    for name, (labels, _) in _variants(tmp_path).items():
        source = nib.load(str(paths[name]))
        output = nib.load(str(tmp_path / "out" / f"{name}.nii.gz"))
        assert output.shape == source.shape
        np.testing.assert_array_equal(output.affine, source.affine)
        assert nib.aff2axcodes(output.affine) == nib.aff2axcodes(source.affine)
        predicted = np.asarray(output.dataobj)
        for k in (1, 2):  # round trip through the 2 mm network grid costs a little at the borders only
            assert _dice(predicted, labels, k) > 0.9, (name, k, _dice(predicted, labels, k))
        if name == "lps":  # a missed flip would be caught: the mirrored labels disagree
            assert _dice(predicted[::-1, ::-1, :], labels, 1) < 0.8
        probabilities = nib.load(str(tmp_path / "out" / f"{name}_probabilities.nii.gz"))
        assert probabilities.shape == (*source.shape, 3)
        values = probabilities.get_fdata()
        assert values.min() >= 0 and values.max() <= 1.0001
        np.testing.assert_allclose(values.sum(-1), 1.0, atol=0.02)


def test_existing_outputs_are_skipped_unless_overwrite(tmp_path, predictor):
    labels, affine = _variants(tmp_path)["ras"]
    path = _write(tmp_path / "case.nii.gz", labels, affine)
    first = predict_files(predictor, [path], tmp_path / "out", progress=False)
    again = predict_files(predictor, [path], tmp_path / "out", progress=False)
    redo = predict_files(predictor, [path], tmp_path / "out", overwrite=True, progress=False)
    assert [first[0]["status"], again[0]["status"], redo[0]["status"]] == ["ok", "skipped (exists)", "ok"]
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind


def test_resample_identity_and_shift():
    torch.manual_seed(0)
    probs = torch.rand(3, 6, 7, 8).softmax(0)
    eye = np.eye(4)
    labels, values = resample_to_grid(probs, eye, eye, (6, 7, 8), keep_values=True, max_points=50)
    np.testing.assert_array_equal(labels, probs.argmax(0).numpy())
    np.testing.assert_allclose(values, probs.numpy(), atol=1e-6)
    shifted = eye.copy()
    shifted[0, 3] = 2.0  # target voxel i sits at source voxel i + 2
    labels, _ = resample_to_grid(probs, eye, shifted, (4, 7, 8))
    np.testing.assert_array_equal(labels, probs.argmax(0).numpy()[2:6])
    labels, _ = resample_to_grid(probs, eye, shifted, (6, 7, 8))
    assert (labels[4:] == 0).all()  # outside the source grid: background


def test_group_cases_follows_nnunet_names(tmp_path):
    from medseg_attn.segmentation.workflows.inputs import group_cases

    single = [tmp_path / "a_0000.nii.gz", tmp_path / "b_0000.nii.gz"]
    assert [name for name, _ in group_cases(single)] == ["a", "b"]  # nnU-Net imagesTs: suffix dropped
    mixed = [tmp_path / "patient_0001.nii.gz", tmp_path / "patient_0002.nii.gz"]
    assert [name for name, _ in group_cases(mixed)] == ["patient_0001", "patient_0002"]  # ordinary names kept
    files = [tmp_path / f"{c}_{k:04d}.nii.gz" for c in ("x", "y") for k in (1, 0)]
    grouped = group_cases(files, in_channels=2)
    assert [(n, [f.name for f in fs]) for n, fs in grouped] == [
        ("x", ["x_0000.nii.gz", "x_0001.nii.gz"]), ("y", ["y_0000.nii.gz", "y_0001.nii.gz"])]
    with pytest.raises(ValueError, match="needs the files z_0000"):
        group_cases([tmp_path / "z_0000.nii.gz"], in_channels=2)


class TwoChannelOracle(IntensityOracle):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x[:, :1] + x[:, 1:2])  # the label is split over two channels


def test_multichannel_case_from_channel_files(tmp_path):
    labels, affine = _variants(tmp_path)["lps"]
    inputs = tmp_path / "imagesTs"
    inputs.mkdir()
    nib.save(nib.Nifti1Image((labels * 60).astype(np.int16), affine), str(inputs / "case_0000.nii.gz"))
    nib.save(nib.Nifti1Image((labels * 40).astype(np.int16), affine), str(inputs / "case_0001.nii.gz"))
    prep = Preprocessing((2.0, 2.0, 2.0), "RAS", "none", (0, 1), True, 3)
    predictor = Predictor(TwoChannelOracle(), prep, {0: "bg", 1: "a", 2: "b"}, (32, 32, 32), InferenceConfig(),
                          "cpu", in_channels=2)
    records = predict_files(predictor, sorted(inputs.iterdir()), tmp_path / "out", progress=False)
    assert [r["case"] for r in records] == ["case"]
    predicted = np.asarray(nib.load(str(tmp_path / "out" / "case.nii.gz")).dataobj)
    assert _dice(predicted, labels, 1) > 0.9 and _dice(predicted, labels, 2) > 0.9
    single = Predictor(IntensityOracle(), prep, {0: "bg", 1: "a", 2: "b"}, (32, 32, 32), InferenceConfig(), "cpu",
                       in_channels=2)
    with pytest.raises(ValueError, match="1 channel\\(s\\), the model expects 2"):
        single.predict(inputs / "case_0000.nii.gz")


def test_bf16_prediction_casts_the_weights_once_per_image_with_the_same_result():
    import contextlib

    from torch.profiler import profile

    from medseg_attn.networks import AttentionSkipUNet

    torch.manual_seed(0)
    network = AttentionSkipUNet(3, 1, 3, channels=(8, 16, 32, 64)).eval()
    prep = Preprocessing(None, "RAS", "none", (0.0, 1.0), False, 3)
    predictor = Predictor(network, prep, {0: "a", 1: "b", 2: "c"}, (32, 32, 32),
                          InferenceConfig(precision="bf16", overlap=0.5, sw_batch_size=1))
    image = torch.randn(1, 64, 48, 32)  # 3 x 2 x 1 windows
    casts, outputs = {}, {}
    for kept in (True, False):
        if not kept:
            predictor._weight_casts_kept = contextlib.nullcontext
        with profile() as trace:
            outputs[kept] = predictor.infer(image)
        casts[kept] = sum(e.count for e in trace.key_averages() if e.key == "aten::_to_copy")
    assert torch.equal(outputs[True], outputs[False])
    assert casts[True] < casts[False]
