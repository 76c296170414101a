"""The acquisition augmentation: every transform runs on real brain patches, the background keeps its one value,
random background masking zeroes what lies outside the dilated label, and classification's call still works."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai import transforms as mt

from medseg_attn.augmentation import (
    _BACKGROUND_KEY,
    RandBackgroundMaskd,
    RandBiasAboveFloord,
    RandGaussianNoiseFastd,
    augmentation,
)
from medseg_attn.config import AugmentationConfig
from medseg_attn.demo_data import generate_case


def _patch():
    case = generate_case(11, 3.0)
    image = torch.from_numpy(case.image.astype(np.float32))[None, :48, :48, :48]
    label = torch.from_numpy(case.label.astype(np.float32))[None, :48, :48, :48]
    image = (image - image[label > 0].mean()) / image[label > 0].std()
    image[:, label[0] == 0] = 0.0  # background = the one value 0, as the masked z-score leaves it
    return image, label


def test_every_transform_keeps_the_background_value():
    image, label = _patch()
    always = AugmentationConfig(affine_probability=0.0, intensity_probability=1.0, inverted_gamma_probability=1.0,
                                bias_field_probability=1.0, low_resolution_probability=1.0,
                                background_mask_probability=0.0)
    chain = mt.Compose(augmentation(always, 3, background=0.0))
    chain.set_random_state(seed=1)
    out = chain({"image": image.clone(), "label": label.clone()})
    changed = out["image"][:, label[0] > 0]
    assert not torch.allclose(changed, image[:, label[0] > 0])  # the foreground was augmented
    assert (out["image"][:, label[0] == 0] == 0).all()  # the background was not
    assert "_background" not in out


def test_random_background_masking():
    image, label = _patch()
    image = image + 0.5  # a background that is not the background value yet (a head with skull)
    masking = RandBackgroundMaskd("image", "label", value=-1.0, prob=1.0, max_dilation=2)
    masking.set_random_state(seed=0)
    out = masking({"image": image, "label": label})["image"]
    far = torch.from_numpy(~_dilate(label[0].numpy() > 0, 2))
    assert (out[:, far] == -1.0).all() and torch.equal(out[:, label[0] > 0], image[:, label[0] > 0])


def _dilate(mask, iterations):
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=iterations)


def test_classification_call_augments_the_image_alone():
    picture = {"image": torch.rand(3, 32, 32)}
    chain = mt.Compose(augmentation(AugmentationConfig(), 2, keys=("image",)))
    chain.set_random_state(seed=0)
    assert chain(picture)["image"].shape == (3, 32, 32)
    assert not any(isinstance(t, RandBackgroundMaskd) for t in chain.transforms)


def test_rotation_pads_with_the_background_value():
    image, label = _patch()
    image = image - 3.0  # a CT-like background value of -3 (the normalised lower clip)
    rotate = AugmentationConfig(affine_probability=1.0, rotate_degrees=45, intensity_probability=0.0,
                                inverted_gamma_probability=0.0, bias_field_probability=0.0,
                                low_resolution_probability=0.0, background_mask_probability=0.0)
    chain = mt.Compose(augmentation(rotate, 3, background=-3.0))
    chain.set_random_state(seed=2)
    out = chain({"image": torch.full_like(image, -3.0), "label": label})["image"]
    assert torch.allclose(out, torch.full_like(out, -3.0), atol=1e-5)  # corners rotated in hold -3, not 0


def test_bias_field_acts_on_the_signal_as_normalising_a_biased_scan_would():
    """zscore(raw * field) == the transform applied to zscore(raw), with the same field: the bias multiplies the
    raw signal (whose zero is the foreground's darkest value), not the normalised values."""
    rng = np.random.default_rng(0)
    raw = torch.from_numpy(rng.uniform(0, 1000, size=(1, 24, 20, 16)).astype(np.float32))
    raw[0, :4] = 0.0  # the darkest foreground voxels hold the raw zero (well above the 0.5th percentile's count)
    background = torch.zeros(24, 20, 16, dtype=torch.bool)
    background[:, :, :3] = True  # outside the body: the normalised background value 0
    field = torch.from_numpy(np.exp(np.linspace(-0.4, 0.4, 24))[:, None, None].repeat(20, 1).repeat(16, 2)).float()

    def zscore(image: torch.Tensor) -> torch.Tensor:
        inside = image[0][~background]
        out = (image - inside.mean()) / inside.std()
        out[0][background] = 0.0
        return out

    transform = RandBiasAboveFloord("image", prob=1.0, coefficient=0.06)
    transform.draw_field = lambda spatial: field  # the field the transform draws, known here
    out = transform({"image": zscore(raw), _BACKGROUND_KEY: background})["image"]
    torch.testing.assert_close(out, zscore(raw * field), atol=1e-4, rtol=1e-4)
    assert (out[0][background] == 0).all()  # the background keeps its value
    # MONAI's RandBiasFieldd multiplies the normalised values: dark tissue (negative z) gets darker where the
    # field brightens, the opposite of a coil's bias
    naive = zscore(raw) * field
    assert (naive - zscore(raw * field)).abs().max() > 0.3


def test_bias_field_draws_a_smooth_field_of_the_configured_strength():
    image = torch.ones(1, 32, 32, 32)
    transform = RandBiasAboveFloord("image", prob=1.0, coefficient=0.06).set_random_state(0)
    ratios = []
    for _ in range(5):
        field = transform.draw_field((32, 32, 32))
        exact = torch.as_tensor(transform.field(image))[0]  # every voxel evaluated (a new draw)
        assert field.shape == (32, 32, 32) and (field > 0).all()
        ratios.append(float(field.max() / field.min()))
        assert (field[1:] - field[:-1]).abs().max() < 0.1 * field.max()  # smooth: interpolated, no steps
    assert 1.2 < float(np.median(ratios)) < 4.0
    assert 1.0 < float(exact.max() / exact.min()) < 20.0
    skipped = RandBiasAboveFloord("image", prob=0.0)({"image": image})
    assert torch.equal(skipped["image"], image)


def test_fast_noise_is_reproducible_zero_mean_and_within_the_configured_strength():
    image = torch.zeros(1, 32, 32, 32)
    draws = []
    for _ in range(2):
        noise = RandGaussianNoiseFastd("image", prob=1.0, std=0.2)
        noise.set_random_state(seed=3)
        draws.append(noise({"image": image})["image"])
    assert torch.equal(draws[0], draws[1])  # the same seed, the same noise
    sigma = float(draws[0].std())
    assert 0.0 < sigma <= 0.2 * 1.05 and abs(float(draws[0].mean())) < 0.05 * sigma + 1e-3
    never = RandGaussianNoiseFastd("image", prob=0.0, std=0.2)
    assert torch.equal(never({"image": image})["image"], image)


def test_rotation_with_a_cached_grid_keeps_the_patch_size_and_label_values():
    from monai.data import MetaTensor

    image, label = _patch()
    chain = mt.Compose(augmentation(AugmentationConfig(affine_probability=1.0), 3, background=0.0,
                                    patch_size=(48, 48, 48)))
    chain.set_random_state(seed=2)
    out = chain({"image": MetaTensor(image), "label": MetaTensor(label)})
    assert out["image"].shape == (1, 48, 48, 48) and out["label"].shape == (1, 48, 48, 48)
    assert not torch.equal(out["label"], label)  # it did rotate
    assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0, 2.0}  # nearest-neighbour labels


def _bias_transform(chain):
    return next(t for t in chain if isinstance(t, RandBiasAboveFloord))


def test_auto_bias_field_is_stronger_for_mr_segmentation_and_unchanged_for_ct_and_classification():
    from medseg_attn.config import DataConfig
    from medseg_attn.segmentation.data.transforms import Preprocessing, training_augmentation

    assert AugmentationConfig().bias_field(mr=True) == (0.5, 0.12)
    assert AugmentationConfig().bias_field(mr=False) == (0.3, 0.06)
    assert AugmentationConfig(bias_field_probability=0.2, bias_field_coefficient=0.05).bias_field(True) == (0.2, 0.05)
    data = DataConfig(patch_size=(32, 32, 32))
    for foreground, expected in (("body", (0.5, 0.12)), ("ct_body", (0.3, 0.06))):
        prep = Preprocessing((2.0, 2.0, 2.0), "RAS", "zscore", (-1000.0, 1000.0), True, 3, foreground, True)
        bias = _bias_transform(training_augmentation(data, 3, prep))
        assert (bias.prob, bias.field.coeff_range) == (expected[0], (0.0, expected[1])), foreground
    picture = _bias_transform(augmentation(AugmentationConfig(), 2, keys=("image",)))  # classification
    assert (picture.prob, picture.field.coeff_range) == (0.3, (0.0, 0.06))


def test_bias_field_settings_read_auto_or_a_number_and_refuse_other_words():
    from medseg_attn.config import ConfigError
    from medseg_attn.config.loading import from_dict

    config = from_dict({"data": {"augmentation": {"bias_field_probability": 0.4}}})
    assert config.data.augmentation.bias_field_probability == 0.4
    assert config.data.augmentation.bias_field_coefficient == "auto"
    with pytest.raises(ConfigError, match="bias_field_coefficient must be a number or 'auto'"):
        from_dict({"data": {"augmentation": {"bias_field_coefficient": "strong"}}})
    with pytest.raises(ConfigError, match=r"bias_field_probability: must be in \[0, 1\]"):
        from_dict({"data": {"augmentation": {"bias_field_probability": 1.5}}})
