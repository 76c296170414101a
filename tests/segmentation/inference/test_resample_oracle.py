"""resample_prediction against SimpleITK's linear resampling, on grids shifted by fractions of a voxel.

Integer shifts cannot tell a correct mapping from one that is off by half a voxel (both land on voxel centres);
SimpleITK's ``ResampleImageFilter`` with a linear interpolator is an independent oracle for sub-voxel offsets,
other spacings and a flipped, rotated target.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from medseg_attn.segmentation.inference.resample import resample_prediction


def _affine(spacing, origin, rotation=None) -> np.ndarray:
    rotation = np.eye(3) if rotation is None else rotation
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def _sitk_image(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image of an (x, y, z) array with a voxel-to-world affine (SimpleITK stores (z, y, x))."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)).astype(np.float64))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((affine[:3, :3] / spacing).flatten().tolist())
    image.SetOrigin(affine[:3, 3].tolist())
    return image


def _oracle(array: np.ndarray, source: np.ndarray, target: np.ndarray, shape) -> np.ndarray:
    reference = _sitk_image(np.zeros(shape), target)
    out = sitk.Resample(_sitk_image(array, source), reference, sitk.Transform(3, sitk.sitkIdentity),
                        sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def _inside(source: np.ndarray, target: np.ndarray, source_shape, shape) -> np.ndarray:
    """Target voxels whose centre maps at least one voxel inside the source grid (the edge rule differs there)."""
    index = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    mapped = (np.linalg.inv(source) @ target @ np.c_[index, np.ones(len(index))].T)[:3].T
    return np.all((mapped >= 1) & (mapped <= np.array(source_shape) - 2), axis=1).reshape(shape)


ANGLE = np.deg2rad(20)
ROTATED = np.array([[np.cos(ANGLE), -np.sin(ANGLE), 0], [np.sin(ANGLE), np.cos(ANGLE), 0], [0, 0, -1.0]])


@pytest.mark.parametrize(("target", "shape"), [
    (_affine((2.0, 1.5, 3.0), (0.5, 0.37, -0.81)), (20, 30, 12)),  # same spacing, sub-voxel origin shifts
    (_affine((1.3, 0.9, 2.2), (1.1, -0.6, 0.45)), (30, 50, 16)),  # finer target grid, shifted
    (_affine((1.7, 1.7, 2.5), (12.0, 8.3, 33.0), ROTATED), (20, 22, 12)),  # rotated about z, z flipped
])
def test_resampled_probabilities_match_simpleitk_linear_resampling(target, shape):
    rng = np.random.default_rng(0)
    source_shape = (24, 36, 14)
    field = ndimage.gaussian_filter(rng.normal(size=source_shape), 1.5)
    first = (field - field.min()) / (field.max() - field.min())  # smooth, but steep enough that half a voxel shows
    values = torch.from_numpy(np.stack([first, 1.0 - first]).astype(np.float32))
    source = _affine((2.0, 1.5, 3.0), (0.0, 0.0, 0.0))
    result = resample_prediction(values, source, target, shape, keep_values=True, fill_background=False)
    expected = _oracle(first, source, target, shape)
    inside = _inside(source, target, source_shape, shape)
    assert inside.mean() > 0.3
    np.testing.assert_allclose(result.probabilities[0][inside], expected[inside], atol=1e-4)
    np.testing.assert_array_equal(result.labels[inside], (expected[inside] < 0.5).astype(np.uint8))
