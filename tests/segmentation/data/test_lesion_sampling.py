"""Sampling by lesion: with one large and ten small lesions, lesion patches are centred on each lesion equally
often (by voxel, the large one takes ~99 % of them), as MONAI's RandCropByLabelClassesd draws its centres."""

from __future__ import annotations

import numpy as np
import torch
from monai import transforms as mt
from scipy import ndimage

from medseg_attn.config import load_config
from medseg_attn.segmentation.data.transforms import LesionIndicesd, training_augmentation


def _case() -> dict:
    label = np.zeros((1, 48, 48, 48), np.uint8)
    label[0, 2:22, 2:22, 2:22] = 1  # one large lesion: 8000 voxels
    for k in range(10):  # ten small ones: 8 voxels each, apart from each other
        x, y = 26 + (k % 5) * 4, 30 + (k // 5) * 8
        label[0, x:x + 2, y:y + 2, 40:42] = 1
    label[0, 40:44, 2:6, 2:6] = 2  # another class, left alone
    item = {"label": torch.as_tensor(label), "image": torch.zeros((1, 48, 48, 48))}
    return mt.ClassesToIndicesd("label", num_classes=3, indices_postfix="_indices",
                                max_samples_per_class=20000)(item)


def _shares(indices: torch.Tensor, components: np.ndarray, count: int) -> np.ndarray:
    draws = components.ravel()[np.asarray(indices)[np.random.default_rng(0).integers(0, len(indices), 20000)]]
    return np.bincount(draws, minlength=count + 1)[1:] / 20000


def test_each_lesion_is_drawn_equally_often():
    item = _case()
    components, count = ndimage.label(np.asarray(item["label"][0]) == 1, np.ones((3, 3, 3)))
    assert count == 11
    by_voxel = _shares(item["label_indices"][1], components, count)
    assert by_voxel[0] > 0.98  # the large lesion takes almost every patch
    balanced = LesionIndicesd([1])(item)
    by_lesion = _shares(balanced["label_indices"][1], components, count)
    assert np.all(np.abs(by_lesion - 1 / 11) < 0.01), by_lesion
    # every location still lies in the class, and the other class's list is untouched
    assert np.all(np.asarray(item["label"][0]).ravel()[np.asarray(balanced["label_indices"][1])] == 1)
    assert torch.equal(torch.as_tensor(balanced["label_indices"][2]), torch.as_tensor(item["label_indices"][2]))


def test_one_lesion_keeps_its_voxel_list():
    item = _case()
    item["label"] = torch.where(item["label"] == 1, 0, item["label"])  # class 1 gone; class 2 is one component
    item = mt.ClassesToIndicesd("label", num_classes=3, indices_postfix="_indices")(item)
    kept = LesionIndicesd([1, 2])(item)
    assert torch.equal(torch.as_tensor(kept["label_indices"][2]), torch.as_tensor(item["label_indices"][2]))


def test_the_training_chain_draws_patches_with_lesion_sampling():
    data = load_config(overrides=["data.patch_size=[16,16,16]", "data.samples_per_case=4",
                                  "model.channels=[8,16]"]).data
    chain = training_augmentation(data, 3, lesion_classes=(1,))
    assert any(isinstance(t, LesionIndicesd) for t in chain)
    assert not any(isinstance(t, LesionIndicesd) for t in training_augmentation(data, 3))
    item = _case()
    patches = mt.Compose(chain)({"image": item["image"], "label": item["label"]})
    assert len(patches) == 4 and all(tuple(p["label"].shape) == (1, 16, 16, 16) for p in patches)
