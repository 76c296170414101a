"""The body mask and the normalisation on it: the same whether the background is noise or exactly zero (real
MNI152 brain MRI), and on the real CT the crop keeps the body and removes the air."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai import transforms as mt
from monai.data import MetaTensor

from medseg_attn.demo_data import generate_case
from medseg_attn.segmentation.data.foreground import body_mask
from medseg_attn.segmentation.data.transforms import Preprocessing, nonzero, preprocessing


@pytest.fixture(scope="module")
def brain_pair():
    """The same real T1 (a deformed MNI152 at 2 mm): background exactly 0, and with Rician noise 3 %."""
    case = generate_case(7, 2.0, appearance=False)
    clean = case.image.astype(np.float32)
    rng = np.random.default_rng(0)
    sigma = 0.03 * float(clean[case.label > 0].mean())
    noisy = np.sqrt((clean + sigma * rng.standard_normal(clean.shape)) ** 2
                    + (sigma * rng.standard_normal(clean.shape)) ** 2).astype(np.float32)
    return clean, noisy, case.label, case.affine


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_body_mask_ignores_the_background(brain_pair):
    clean, noisy, label, _ = brain_pair
    assert float((clean == 0).mean()) > 0.4 and float((noisy == 0).mean()) < 0.01
    zero_mask, noisy_mask = body_mask(clean[None]), body_mask(noisy[None])
    assert _dice(zero_mask, noisy_mask) > 0.99
    assert zero_mask[label > 0].all() and noisy_mask[label > 0].all()  # every grey/white matter voxel is inside
    assert 0.3 < zero_mask.mean() < 0.6
    # the old rule: 'nonzero' is the head on one and the whole volume on the other
    assert float(nonzero(torch.from_numpy(noisy[None])).float().mean()) > 0.99


def _normalise(image: np.ndarray, affine: np.ndarray) -> np.ndarray:
    prep = Preprocessing(None, "RAS", "zscore", (0.0, 1.0), False, 3, foreground="body", use_mask=True)
    chain = mt.Compose(preprocessing(prep, keys=("image",), load=False))
    out = chain({"image": MetaTensor(torch.from_numpy(image[None]), affine=torch.from_numpy(affine))})
    return np.asarray(out["image"][0])


def test_normalised_foreground_is_the_same_for_zero_and_noisy_background(brain_pair):
    clean, noisy, label, affine = brain_pair
    a, b = _normalise(clean, affine), _normalise(noisy, affine)
    brain = label > 0
    assert abs(float(a[brain].mean()) - float(b[brain].mean())) < 0.05
    assert abs(float(a[brain].std()) - float(b[brain].std())) < 0.05
    assert float(np.abs(a[brain] - b[brain]).mean()) < 0.12  # what is left is the noise itself
    outside = ~body_mask(clean[None]) & ~body_mask(noisy[None])
    assert outside.mean() > 0.4 and (a[outside] == 0).all() and (b[outside] == 0).all()  # one background value


def test_ct_body_crop_keeps_the_body_and_removes_the_air(ct_dir):
    from medseg_attn.io.readers import LoadVolumed

    data = LoadVolumed(["image", "label"])({"image": ct_dir / "dicom", "label": ct_dir / "example_seg_dicom.nii.gz"})
    organs = int((np.asarray(data["label"]) > 0).sum())
    prep = Preprocessing(None, "RAS", "ct", (-1000.0, 1000.0), True, 3, foreground="ct_body", use_mask=True,
                         ct_clip=(-100.0, 250.0), ct_mean=90.0, ct_std=50.0)
    out = mt.Compose(preprocessing(prep, load=False))(data)
    shape = out["image"].shape[1:]
    # the air in front of and behind the body, and the table, are gone (the arms reach the sides of the field)
    assert shape[0] * shape[1] < 0.6 * 512 * 512 and shape[2] == 20
    assert int((np.asarray(out["label"]) > 0).sum()) == organs  # every organ voxel kept
    image = np.asarray(out["image"][0])
    low, high = (-100 - 90) / 50, (250 - 90) / 50
    assert image.min() >= low - 1e-5 and image.max() <= high + 1e-5
    # the crop's corners (air inside the box, outside the body) hold the one background value
    assert image[0, 0, 0] == pytest.approx(low) and image[-1, -1, -1] == pytest.approx(low)
    hu = np.asarray(data["image"][0])
    assert float((hu < -900).mean()) > 0.3  # the raw series is mostly air: the crop had work to do


def test_checkpoints_from_before_the_body_mask_keep_their_nonzero_rule():
    old = {"spacing": [2.0, 2.0, 2.0], "orientation": "RAS", "intensity": "ct", "ct_window": [-57, 164],
           "crop_foreground": True, "spatial_dims": 3}
    prep = Preprocessing.from_dict(old)
    assert prep.foreground == "nonzero" and prep.intensity == "ct_window" and not prep.use_mask
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    mr = Preprocessing.from_dict({**old, "intensity": "zscore"})
    assert mr.use_mask and mr.foreground == "nonzero"
