"""Lesion-wise scores (medseg_attn.segmentation.measures.lesions) on hand-built cases with known answers, and
against an independent computation (scipy.ndimage.label on the whole volume, surface distances from scipy's
distance transform) on random blobs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg_attn.errors import UserError
from medseg_attn.segmentation.measures.lesions import LESION_COLUMNS, LesionRules, label_lesions, lesion_scores

SHAPE = (16, 16, 16)


def box(*ranges: tuple[int, int], shape=SHAPE) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in ranges)] = True
    return mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def test_two_reference_lesions_a_voxel_apart_and_one_prediction_covering_both():
    first, second = box((2, 5), (2, 5), (2, 5)), box((6, 9), (2, 5), (2, 5))  # a one-voxel gap along axis 0
    prediction = box((2, 9), (2, 5), (2, 5))  # the two and the gap: one component
    result = lesion_scores(prediction, first | second, (1.0, 1.0, 1.0))
    assert result.counts == {**result.counts, "reference_lesions": 2, "predicted_lesions": 1, "true_positives": 2,
                             "false_positives": 0, "false_negatives": 0, "lesion_f1": 1.0}
    expected = dice(first, prediction)  # each lesion scored against the whole predicted component
    assert [pair["dice"] for pair in result.pairs] == pytest.approx([expected, expected])
    assert [pair["predicted_lesions"] for pair in result.pairs] == ["1", "1"]
    assert result.counts["lesionwise_dice"] == pytest.approx(expected)


def test_touching_lesions_are_one_under_26_and_two_under_6_connectivity():
    reference = box((2, 5), (2, 5), (2, 5)) | box((5, 8), (5, 8), (5, 8))  # the cubes share one corner only
    for connectivity, lesions in ((26, 1), (18, 2), (6, 2)):
        counts = lesion_scores(reference, reference, (1, 1, 1), LesionRules(connectivity=connectivity)).counts
        assert (counts["reference_lesions"], counts["true_positives"], counts["lesionwise_dice"]) == (
            lesions, lesions, 1.0)


def test_a_prediction_split_in_two_over_one_lesion_is_one_found_lesion():
    reference = box((2, 10), (2, 8), (2, 8))
    left, right = box((2, 5), (2, 8), (2, 8)), box((6, 11), (2, 8), (2, 8))  # a gap at 5, one voxel too far at 10
    result = lesion_scores(left | right, reference, (1.0, 1.0, 1.0))
    assert result.counts["predicted_lesions"] == 2 and result.counts["true_positives"] == 1
    assert result.counts["false_positives"] == 0 and result.counts["lesion_f1"] == 1.0
    (pair,) = result.pairs
    assert pair["kind"] == "matched" and pair["predicted_lesions"] == "1;2"
    assert pair["dice"] == pytest.approx(dice(left | right, reference))
    assert pair["predicted_volume_ml"] == pytest.approx((left | right).sum() / 1000)


def test_a_one_voxel_lesion_found_missed_and_below_the_minimum_volume():
    voxel = box((7, 8), (7, 8), (7, 8))
    found = lesion_scores(voxel, voxel, (2.0, 2.0, 2.0)).counts
    assert (found["true_positives"], found["lesionwise_dice"], found["lesionwise_hd95"]) == (1, 1.0, 0.0)
    missed = lesion_scores(np.zeros(SHAPE, bool), voxel, (2.0, 2.0, 2.0), LesionRules(hd95_max_mm=100.0)).counts
    assert (missed["false_negatives"], missed["lesion_f1"], missed["lesionwise_dice"], missed["lesionwise_hd95"]) \
        == (1, 0.0, 0.0, 100.0)
    # 8 mm^3 = 0.008 ml per voxel: below a 0.01 ml minimum the voxel is no lesion on either side
    small = LesionRules(min_volume_ml=0.01)
    assert lesion_scores(np.zeros(SHAPE, bool), voxel, (2.0, 2.0, 2.0), small).counts["reference_lesions"] == 0
    assert lesion_scores(voxel, np.zeros(SHAPE, bool), (2.0, 2.0, 2.0), small).counts["false_positives"] == 0
    assert lesion_scores(voxel, voxel, (2.0, 2.0, 2.0), LesionRules(min_volume_ml=0.008)).counts[
        "true_positives"] == 1  # at the minimum counts


def test_empty_reference_with_false_positives_and_empty_prediction_and_both_empty():
    empty = np.zeros(SHAPE, bool)
    two = box((1, 3), (1, 3), (1, 3)) | box((9, 12), (9, 12), (9, 12))
    false = lesion_scores(two, empty, (1, 1, 1))
    assert {key: false.counts[key] for key in LESION_COLUMNS} == {
        "reference_lesions": 0, "predicted_lesions": 2, "true_positives": 0, "false_positives": 2,
        "false_negatives": 0, "lesion_f1": 0.0, "lesionwise_dice": 0.0, "lesionwise_hd95": 374.0}
    assert [pair["kind"] for pair in false.pairs] == ["false_positive", "false_positive"]
    assert [pair["predicted_volume_ml"] for pair in false.pairs] == pytest.approx([0.008, 0.027])
    missed = lesion_scores(empty, two, (1, 1, 1))
    assert (missed.counts["false_negatives"], missed.counts["lesion_f1"], missed.counts["lesionwise_dice"]) == (
        2, 0.0, 0.0)
    assert [pair["kind"] for pair in missed.pairs] == ["missed", "missed"]
    nothing = lesion_scores(empty, empty, (1, 1, 1))
    assert nothing.pairs == [] and nothing.counts == {
        "reference_lesions": 0, "predicted_lesions": 0, "true_positives": 0, "false_positives": 0,
        "false_negatives": 0, "lesion_f1": 1.0, "lesionwise_dice": 1.0, "lesionwise_hd95": 0.0}


def test_brats_aggregation_counts_misses_and_false_positives_as_zero_and_the_maximum():
    reference = box((1, 5), (1, 5), (1, 5)) | box((10, 13), (10, 13), (10, 13))
    prediction = box((1, 5), (1, 5), (1, 5)) | box((1, 3), (12, 14), (12, 14))  # one exact, one false, one missed
    counts = lesion_scores(prediction, reference, (1, 1, 1)).counts
    assert (counts["true_positives"], counts["false_positives"], counts["false_negatives"]) == (1, 1, 1)
    assert counts["lesionwise_dice"] == pytest.approx(1 / 3)
    assert counts["lesionwise_hd95"] == pytest.approx(2 * 374 / 3)
    assert counts["lesion_f1"] == pytest.approx(2 / 4)


def test_iou_rule_turns_a_thin_overlap_into_a_miss_and_a_false_positive():
    reference = box((2, 10), (2, 10), (2, 10))  # 512 voxels
    prediction = box((9, 14), (2, 10), (2, 10))  # shares one slab of 64 voxels: IoU 64 / 768
    assert lesion_scores(prediction, reference, (1, 1, 1)).counts["true_positives"] == 1
    for threshold, found in ((64 / 768, 1), (0.1, 0)):
        counts = lesion_scores(prediction, reference, (1, 1, 1), LesionRules(overlap=f"iou:{threshold}")).counts
        assert (counts["true_positives"], counts["false_negatives"], counts["false_positives"]) == (
            found, 1 - found, 1 - found)


def test_hd95_of_a_shifted_lesion_is_the_shift_in_mm():
    reference = box((3, 8), (3, 8), (3, 8))
    shifted = box((4, 9), (3, 8), (3, 8))
    (pair,) = lesion_scores(shifted, reference, (2.5, 1.0, 1.0)).pairs
    assert pair["hd95_mm"] == pytest.approx(2.5)


def test_bad_rules_and_too_many_lesions_are_one_line_errors():
    for rules in ({"connectivity": 8}, {"overlap": "iou:0"}, {"overlap": "iou:1.5"}, {"overlap": "dice:0.5"},
                  {"overlap": "iou:x"}, {"min_volume_ml": -1.0}, {"hd95_max_mm": 0.0}):
        with pytest.raises(UserError):
            LesionRules(**rules)
    assert LesionRules(overlap="IoU:0.25").iou_threshold == 0.25 and LesionRules().iou_threshold is None
    noise = np.zeros((82, 82, 82), bool)
    noise[::2, ::2, ::2] = True  # 41^3 = 68921 isolated voxels
    with pytest.raises(UserError, match="68921 connected components; at most 65535"):
        label_lesions(noise, 26, what="case_1: reference")
    with pytest.raises(UserError, match="expected one 2D or 3D shape"):
        lesion_scores(np.zeros((4, 4, 4), bool), np.zeros((4, 4, 5), bool), (1, 1, 1))


# -- an independent computation on random blobs ---------------------------------------------------------------------

def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1))


def _hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """Symmetric 95th-percentile surface distance: each surface's distances to the other's, the larger one."""
    directed = []
    for source, target in ((a, b), (b, a)):
        distance = ndimage.distance_transform_edt(~_surface(target), sampling=spacing)
        directed.append(np.percentile(distance[_surface(source)], 95))
    return float(max(directed))


def _oracle(prediction, reference, spacing, connectivity, threshold, hd_max=374.0):
    structure = ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])
    ref, n_ref = ndimage.label(reference, structure)
    pred, n_pred = ndimage.label(prediction, structure)
    used, scores = set(), []
    for r in range(1, n_ref + 1):
        lesion = ref == r
        found = []
        for p in np.unique(pred[lesion]):
            if p == 0:
                continue
            component = pred == p
            iou = (lesion & component).sum() / (lesion | component).sum()
            if threshold is None or iou >= threshold:
                found.append(int(p))
        used.update(found)
        union = np.isin(pred, found)
        scores.append((dice(lesion, union), _hd95(lesion, union, spacing)) if found else None)
    tp = sum(score is not None for score in scores)
    fn, fp = n_ref - tp, n_pred - len(used)
    total = tp + fn + fp
    return {"reference_lesions": n_ref, "predicted_lesions": n_pred, "true_positives": tp,
            "false_positives": fp, "false_negatives": fn,
            "lesion_f1": 2 * tp / (2 * tp + fp + fn) if total else 1.0,
            "lesionwise_dice": sum(s[0] for s in scores if s) / total if total else 1.0,
            "lesionwise_hd95": (sum(s[1] for s in scores if s) + (fn + fp) * hd_max) / total if total else 0.0}


def _blobs(rng: np.random.Generator, shape=(28, 24, 20), fraction=0.08) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma=1.6)
    return field > np.quantile(field, 1 - fraction)


@pytest.mark.parametrize(("seed", "connectivity", "overlap"),
                         [(0, 26, "any"), (1, 6, "any"), (2, 18, "iou:0.3"), (3, 26, "iou:0.1")])
def test_random_blobs_match_an_independent_computation(seed, connectivity, overlap):
    rng = np.random.default_rng(seed)
    reference = _blobs(rng)
    prediction = np.roll(reference, rng.integers(-2, 3), axis=0)
    prediction = ndimage.binary_dilation(prediction) if seed % 2 else prediction
    prediction = (prediction & ~_blobs(rng, fraction=0.15)) | _blobs(rng, fraction=0.03)  # cut, add false blobs
    spacing = (0.8, 1.0, 2.5)
    rules = LesionRules(connectivity=connectivity, overlap=overlap)
    result = lesion_scores(prediction, reference, spacing, rules)
    expected = _oracle(prediction, reference, spacing, connectivity, rules.iou_threshold)
    assert expected["reference_lesions"] >= 3 and expected["true_positives"] >= 1  # a case worth checking
    assert expected["false_positives"] + expected["false_negatives"] >= 1
    assert {key: result.counts[key] for key in expected} == pytest.approx(expected)
    assert len(result.pairs) == expected["true_positives"] + expected["false_negatives"] + expected["false_positives"]


def test_2d_maps_use_4_or_8_connectivity():
    reference = np.zeros((8, 8), bool)
    reference[1, 1] = reference[2, 2] = True  # diagonal neighbours
    assert lesion_scores(reference, reference, (0.5, 0.5), LesionRules(connectivity=26)).counts[
        "reference_lesions"] == 1
    assert lesion_scores(reference, reference, (0.5, 0.5), LesionRules(connectivity=6)).counts[
        "reference_lesions"] == 2
