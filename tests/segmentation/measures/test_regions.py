"""Region-based labels: dataset.json parsing, region masks, and the painting of region probabilities into a label
map, checked against nnU-Net v2's rule written out independently here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg_attn.errors import UserError
from medseg_attn.segmentation.measures.regions import Regions

BRATS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": 3}


def nnunet_paint(probabilities: np.ndarray, regions_class_order: list[int]) -> np.ndarray:
    """nnU-Net v2's LabelManager.convert_probabilities_to_segmentation for regions, as it is written there."""
    segmentation = np.zeros(probabilities.shape[1:], dtype=np.uint16)
    for i, c in enumerate(regions_class_order):
        segmentation[probabilities[i] > 0.5] = c
    return segmentation


def test_brats_regions_are_read_in_order():
    regions = Regions.from_labels(BRATS, [1, 2, 3], "dataset.json")
    assert regions.names == ("whole_tumor", "tumor_core", "enhancing_tumor")
    assert regions.values == ((1, 2, 3), (2, 3), (3,)) and regions.order == (1, 2, 3)
    assert regions.labels == {0: "background", 1: "whole_tumor", 2: "tumor_core", 3: "enhancing_tumor"}
    assert Regions.from_dict(regions.to_dict()) == regions
    assert Regions.from_labels({"background": 0, "liver": 1}, None, "x") is None  # plain classes


@pytest.mark.parametrize("seed", range(5))
def test_painting_equals_nnunets_rule_on_random_probabilities(seed):
    generator = np.random.default_rng(seed)
    probabilities = generator.random((3, 9, 8, 7)).astype(np.float32)
    probabilities[:, 0] = 0.5  # exactly at the threshold: not painted (strictly greater)
    for order in ([1, 2, 3], [3, 1, 2]):
        regions = Regions(("a", "b", "c"), ((1, 2, 3), (2, 3), (3,)), tuple(order))
        ours = regions.paint(torch.from_numpy(probabilities)).numpy()
        assert np.array_equal(ours, nnunet_paint(probabilities, order))


def test_region_targets_are_the_label_values_inside_each_region():
    regions = Regions.from_labels(BRATS, [1, 2, 3], "dataset.json")
    label = torch.tensor([0, 1, 2, 3]).reshape(1, 1, 4)
    targets = regions.targets(label)  # (1, 3, 4)
    assert targets[0].tolist() == [[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]]
    # painting the targets themselves gives the label map back (nested regions, largest first)
    assert regions.paint(targets[0]).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(("labels", "order", "message"), [
    (BRATS, [1, 2, 5], "paints [5], which no region holds"),
    (BRATS, [1, 2], "need 'regions_class_order' with one label value per region (3"),
    (BRATS, None, "need 'regions_class_order'"),
    (BRATS, [1, 1, 3], "paints a value twice"),
    ({"background": 0, "tumour": [1, "x"]}, [1], "label 'tumour'"),
    ({"background": 0, "tumour": []}, [1], "label 'tumour'"),
    ({"background": 0, "liver": 1}, [1], "no label is a region"),
])
def test_bad_regions_are_one_line(labels, order, message):
    with pytest.raises(UserError, match="dataset.json: .*") as error:
        Regions.from_labels(labels, order, "dataset.json")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_check_values_names_a_region_value_no_label_map_holds():
    regions = Regions.from_labels(BRATS, [1, 2, 3], "dataset.json")
    regions.check_values([0, 1, 2, 3], "data")
    with pytest.raises(UserError, match=r"region 'whole_tumor' lists value\(s\) \[3\]"):
        regions.check_values([0, 1, 2], "data")
