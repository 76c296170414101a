"""Per-lesion statistics on a hand-built volume whose every number is worked out by hand: an oblique-free but
permuted and flipped affine (voxel axes i, j, k -> world y, -x, z), lesions touching only at a corner (one lesion
at 26-connectivity), two lesion structures numbered on, two image channels, probabilities and uncertainty."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg_attn.errors import UserError
from medseg_attn.segmentation.measures.lesion_statistics import (
    lesion_columns,
    lesion_summary,
    lesion_table,
    summary_columns,
)

# world x = -2 j + 10, y = 1.5 i - 5, z = 3 k + 7 (mm): voxel 9 mm^3
AFFINE = np.array([[0.0, -2.0, 0.0, 10.0], [1.5, 0.0, 0.0, -5.0], [0.0, 0.0, 3.0, 7.0], [0.0, 0.0, 0.0, 1.0]])


def _volume() -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((10, 8, 6), np.int16)
    labels[2:4, 3:6, 1] = 1  # lesion 1: 2 x 3 x 1 voxels, first in raster order
    labels[7, 0, 4] = labels[8, 1, 5] = 1  # lesion 2: two voxels touching at a corner only
    labels[5, 5, 3] = 2  # the second lesion structure: lesion 3
    labels[0, 7, 0] = 3  # not a lesion structure
    images = np.zeros((2, *labels.shape), np.float32)
    images[0][labels == 1] = 10.0
    images[0][7, 0, 4], images[0][8, 1, 5] = 20.0, 40.0
    images[1] = np.arange(labels.size, dtype=np.float32).reshape(labels.shape)
    return labels, images


def test_rows_hold_the_hand_worked_volumes_centroids_extents_and_means():
    labels, images = _volume()
    probability = np.full(labels.shape, 0.25, np.float32)
    probability[labels == 1] = 0.75
    uncertainty = np.full(labels.shape, 0.5, np.float32)
    table = lesion_table(labels, AFFINE, {1: "lesion", 2: "edema"}, images, {1: probability}, uncertainty,
                         case="c1")
    rows = table.rows
    assert [(r["structure"], r["label"], r["lesion"], r["voxels"]) for r in rows] == [
        ("lesion", 1, 1, 6), ("lesion", 1, 2, 2), ("edema", 2, 3, 1)]
    first, second, third = rows
    assert first["volume_ml"] == pytest.approx(6 * 9 / 1000) and second["volume_ml"] == pytest.approx(0.018)
    # centroid of lesion 1: voxel (2.5, 4, 1) -> x = -8 + 10, y = 3.75 - 5, z = 3 + 7
    assert (first["centroid_ras_mm_x"], first["centroid_ras_mm_y"], first["centroid_ras_mm_z"]) == (2.0, -1.25, 10.0)
    # lesion 2: voxel (7.5, 0.5, 4.5) -> x = 9, y = 6.25, z = 20.5
    assert (second["centroid_ras_mm_x"], second["centroid_ras_mm_y"], second["centroid_ras_mm_z"]) == (9.0, 6.25, 20.5)
    # extents along the world axes (voxel faces): lesion 1 spans 3 voxels of j (x: 6 mm), 2 of i (y: 3 mm), 1 of k
    assert (first["bbox_rl_mm"], first["bbox_ap_mm"], first["bbox_si_mm"]) == (6.0, 3.0, 3.0)
    assert (second["bbox_rl_mm"], second["bbox_ap_mm"], second["bbox_si_mm"]) == (4.0, 3.0, 6.0)
    assert first["intensity_mean_ch0"] == 10.0 and second["intensity_mean_ch0"] == 30.0
    assert second["intensity_mean_ch1"] == pytest.approx((images[1][7, 0, 4] + images[1][8, 1, 5]) / 2)
    assert first["probability_mean"] == 0.75 and third["probability_mean"] is None  # no map of class 2 given
    assert {r["uncertainty_mean"] for r in rows} == {0.5}
    assert table.columns == lesion_columns(2) and all(tuple(r) == table.columns for r in rows)
    # the instance map: each lesion its number, the ids of scipy.ndimage.label (26-connected) for the first one
    reference, count = ndimage.label(labels == 1, np.ones((3, 3, 3)))
    assert count == 2 and np.array_equal(np.where(labels == 1, table.instances, 0), reference)
    assert set(np.unique(table.instances[labels == 2])) == {3} and table.instances[labels == 3].max() == 0
    summary = lesion_summary(rows, ("lesion", "edema"))
    assert summary == {"lesion": {"lesions": 2, "volume_ml": 0.072}, "edema": {"lesions": 1, "volume_ml": 0.009}}
    assert summary_columns(["lesion"]) == ("lesions_lesion", "lesion_volume_ml_lesion")


def test_maps_not_computed_leave_their_columns_empty_and_ct_names_hu():
    labels, _ = _volume()
    rows = lesion_table(labels, AFFINE, {1: "lesion"}, unit="hu", channels=2).rows
    assert "intensity_mean_ch1_hu" in rows[0]
    assert all(rows[0][key] is None for key in ("intensity_mean_ch0_hu", "probability_mean", "uncertainty_mean"))
    assert lesion_table(np.zeros((4, 4, 4), np.uint8), AFFINE, {1: "lesion"}).rows == []
    assert lesion_summary([], ["lesion"]) == {"lesion": {"lesions": 0, "volume_ml": 0.0}}


def test_2d_lesions_are_8_connected_with_a_3x3_affine():
    labels = np.zeros((6, 6), np.uint8)
    labels[1, 1] = labels[2, 2] = 1  # diagonal neighbours: one lesion
    labels[4, 5] = 1
    rows = lesion_table(labels, np.diag([2.0, 3.0, 1.0]), {1: "lesion"}).rows
    assert [r["voxels"] for r in rows] == [2, 1]
    assert (rows[0]["centroid_ras_mm_x"], rows[0]["centroid_ras_mm_y"], rows[0]["centroid_ras_mm_z"]) == (3.0, 4.5, 0)


def test_more_lesions_than_the_instance_map_holds_is_one_line():
    labels, _ = _volume()
    with pytest.raises(UserError, match=r"c1: 3 lesions \(edema: 1\); an instance map holds at most 2 "):
        lesion_table(labels, AFFINE, {1: "lesion", 2: "edema"}, case="c1", limit=2)
    assert len(lesion_table(labels, AFFINE, {1: "lesion", 2: "edema"}, limit=None).rows) == 3
    with pytest.raises(UserError, match="differs from the label map"):
        lesion_table(labels, AFFINE, {1: "lesion"}, uncertainty=np.zeros((2, 2, 2)))
