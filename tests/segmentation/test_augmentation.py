"""The acquisition augmentation: every transform runs on real brain patches, the background keeps its one value,
random background masking zeroes what lies outside the dilated label, and classification's call still works."""

from __future__ import annotations

import numpy as np
import torch
from monai import transforms as mt

from medseg_attn.augmentation import RandBackgroundMaskd, augmentation
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
