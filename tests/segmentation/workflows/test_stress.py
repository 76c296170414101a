"""The stress variants are what they say: real MNI152 cases and the real CT, each scored on its own grid."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medseg_attn.segmentation.workflows.stress import (
    BRAIN_VARIANTS,
    FAILURE_VARIANTS,
    brain_variants,
    dice_scores,
    volume_variants,
)


def test_brain_variants():
    variants = {name: (image, label, affine) for name, image, label, affine in brain_variants(
        0, ("as_is", "zero_background", "skull_stripped", "no_noise", "low_resolution", "oblique_lps"))}
    as_is, label, affine = variants["as_is"]
    assert (as_is == 0).mean() < 0.01  # noise everywhere
    zero = variants["zero_background"][0]
    assert (zero == 0).mean() > 0.3 and np.array_equal(zero[label > 0], as_is[label > 0])
    stripped = variants["skull_stripped"][0]
    assert (stripped[~ndimage.binary_dilation(label > 0, iterations=2)] == 0).all()
    assert (variants["no_noise"][0] == 0).mean() > 0.3
    low_image, low_label, low_affine = variants["low_resolution"]
    assert low_affine[2, 2] == 3.0 and low_image.shape[2] == as_is.shape[2] // 3 and low_label.shape == low_image.shape
    oblique_affine = variants["oblique_lps"][2]
    assert oblique_affine[0, 0] < 0 and oblique_affine[1, 1] < 0 and abs(oblique_affine[0, 1]) > 0.1  # LPS, rotated
    # the label follows the anatomy onto the new grid: the same brain volume within a few percent
    volume = (label > 0).sum() * 1.0
    assert abs((variants["oblique_lps"][1] > 0).sum() * 1.2**3 / volume - 1) < 0.05


def test_failure_mode_variants():
    assert not set(FAILURE_VARIANTS) & set(BRAIN_VARIANTS) and len(BRAIN_VARIANTS) == 13  # the default set unchanged
    variants = {name: (image, label, affine) for name, image, label, affine in brain_variants(
        1, ("as_is", "no_noise") + FAILURE_VARIANTS)}
    as_is, label, affine = variants["as_is"]
    brain_mean = float(variants["no_noise"][0][label > 0].mean())
    flipped, flipped_label, flipped_affine = variants["flipped_header"]
    assert np.array_equal(flipped, as_is[:, :, ::-1]) and flipped_label is label
    assert np.array_equal(flipped_affine, affine)
    assert dice_scores(label[:, :, ::-1], label, {1: "grey_matter", 2: "white_matter"})["white_matter"] < 0.8
    noisy, noisy_label, noisy_affine = variants["heavy_noise"]
    background = ~ndimage.binary_dilation(variants["no_noise"][0] > 0, iterations=3)
    # Rician noise in the background: mean sigma * sqrt(pi / 2) with sigma = 15 % of the brain mean
    assert 0.12 < float(noisy[background].mean()) / brain_mean / np.sqrt(np.pi / 2) < 0.18
    assert float(as_is[background].mean()) / brain_mean < 0.05 and np.array_equal(noisy_affine, affine)
    ghosted = variants["ghosting"][0]
    shift = as_is.shape[1] // 4
    assert np.allclose(ghosted, as_is + 0.25 * (np.roll(as_is, shift, 1) + np.roll(as_is, -shift, 1)), atol=1e-3)
    assert ghosted.shape == as_is.shape and float(ghosted[background].mean()) > 2 * float(as_is[background].mean())
    cut, cut_label, cut_affine = variants["truncated_fov"]
    keep = as_is.shape[2] - as_is.shape[2] // 3
    assert cut.shape == cut_label.shape == (*as_is.shape[:2], keep) and np.array_equal(cut_affine, affine)
    assert np.array_equal(cut, as_is[:, :, :keep]) and np.array_equal(cut_label, label[:, :, :keep])
    assert (label[:, :, keep:] > 0).sum() > 0.1 * (label > 0).sum()  # real anatomy was cut away
    low, low_label, low_affine = variants["very_low_resolution"]
    assert np.allclose(np.diag(low_affine)[:3], [1.0, 1.0, 6.0]) and np.allclose(low_affine[:3, 3], affine[:3, 3])
    assert low.shape == low_label.shape == (*as_is.shape[:2], as_is.shape[2] // 6)
    # the label follows onto the 6 mm grid: its brain volume within a few percent
    assert abs((low_label > 0).sum() * 6.0 / (label > 0).sum() - 1) < 0.05
    ct, ct_label, ct_affine = variants["ct_into_mr"]
    assert ct_label is label and np.array_equal(ct_affine, affine) and ct.shape == as_is.shape
    # Hounsfield units of the same head: white matter ~28 HU, grey ~40, air ~-1000, a bright skull ring
    assert abs(float(np.median(ct[label == 2])) - 28) < 3 and abs(float(np.median(ct[label == 1])) - 40) < 3
    bright = ct > 500  # skull and scalp: outside the brain, around it
    assert float(np.median(ct[background])) < -900 and bright.sum() > 0.005 * (label > 0).sum()
    assert not (bright & (label > 0)).any()
    for name in FAILURE_VARIANTS:  # deterministic from the seed
        again = next(brain_variants(1, (name,)))[1]
        assert np.array_equal(again, variants[name][0]), name


def test_volume_variants_of_the_real_ct(ct_dir):
    import nibabel as nib

    seg = nib.load(str(ct_dir / "example_seg_dicom.nii.gz"))
    label = (np.asarray(seg.dataobj) == 5).astype(np.uint8)[::2, ::2]  # the liver, half resolution in plane
    affine = seg.affine @ np.diag([2.0, 2.0, 1.0, 1.0])
    image = np.where(label > 0, 60.0, -1000.0).astype(np.float32)
    variants = {name: (i, lab, a) for name, i, lab, a in volume_variants(image, label, affine)}
    assert set(variants) == {"as_is", "moved", "resampled", "noised", "hu_offset", "combined"}
    assert np.allclose(variants["hu_offset"][0] - image, 40.0)
    spacing = np.linalg.norm(variants["resampled"][2][:3, :3], axis=0)
    assert np.allclose(spacing, [1.2, 1.2, 2.5])
    for name, (moved, moved_label, _) in variants.items():
        # the image and its label still agree after every move: liver HU inside the label
        assert float(np.median(moved[moved_label > 0])) > 0, name
    assert dice_scores(label, label, {0: "background", 1: "liver"}) == {"liver": 1.0}


def test_run_stress_writes_the_scores(tmp_path):
    from medseg_attn.io.tables import read_csv_rows
    from medseg_attn.segmentation.workflows.stress import run_stress

    class Threshold:  # a stand-in model: liver wherever the image is above 0 HU
        labels = {0: "background", 1: "liver"}

        def predict(self, image, affine=None):
            from types import SimpleNamespace

            return SimpleNamespace(labels=(image > 0).astype(np.uint8), seconds=0.1)

    label = np.zeros((12, 12, 6), np.uint8)
    label[3:9, 3:9, 1:5] = 1
    image = np.where(label > 0, 60.0, -1000.0).astype(np.float32)
    rows = run_stress(Threshold(), [(0, v) for v in volume_variants(image, label, np.eye(4))], tmp_path, "t")
    written = read_csv_rows(tmp_path / "stress.csv")
    assert [r["variant"] for r in written] == [r["variant"] for r in rows] and len(written) == 6
    assert float(written[0]["liver"]) == 1.0 and set(written[0]) == {"case", "variant", "liver", "seconds"}
    assert (tmp_path / "stress.png").stat().st_size > 5000


def test_labels_are_resampled_as_class_shares_not_nearest_voxels():
    """A ball moved to a 1.2 mm grid: the resampled reference matches the ball drawn on that grid (a nearest-voxel
    sample of the 1 mm ball jitters its boundary by up to half a voxel)."""
    from medseg_attn.segmentation.workflows.stress import resample_to

    def ball(spacing, shape, radius=9.0):
        centre = np.array([20.0, 20.0, 20.0])
        grid = np.stack(np.meshgrid(*(np.arange(n) * spacing for n in shape), indexing="ij"), -1)
        return (np.linalg.norm(grid - centre, axis=-1) <= radius).astype(np.uint8)

    source = ball(1.0, (41, 41, 41))
    target = np.diag([1.2, 1.2, 1.2, 1.0])
    truth = ball(1.2, (34, 34, 34))
    _, labels = resample_to(source.astype(np.float32), source, np.eye(4), target, (34, 34, 34))
    nearest = ndimage.affine_transform(source, np.diag([1.2] * 3), 0.0, (34, 34, 34), order=0)

    def dice(mask):
        return 2 * (mask & truth).sum() / (mask.sum() + truth.sum())

    assert labels.dtype == source.dtype and set(np.unique(labels)) == {0, 1}
    assert dice(labels) > 0.975 and dice(labels) > dice(nearest) + 0.01  # measured 0.979 against 0.961
    two = source * 2  # class values kept, not renumbered
    assert set(np.unique(resample_to(source.astype(np.float32), two, np.eye(4), target, (34, 34, 34))[1])) == {0, 2}
