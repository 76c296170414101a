"""The one 2D/3D affine -> 4x4 helper."""

from __future__ import annotations

import numpy as np

from medseg_attn.io.volumes import affine_4x4


def test_affine_4x4_embeds_2d_and_keeps_3d():
    flat = np.array([[0.0, -2.0, 10.0], [1.5, 0.0, -4.0], [0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(affine_4x4(flat), [[0, -2, 0, 10], [1.5, 0, 0, -4], [0, 0, 1, 0], [0, 0, 0, 1]])
    volume = np.array([[0.0, 0.0, 3.0, 7.0], [-1.0, 0.0, 0.0, 8.0], [0.0, 2.0, 0.5, 9.0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(affine_4x4(volume), volume)
    # a 2D grid stored with a 4x4 (NIfTI): only its in-plane rows/columns and translation
    np.testing.assert_array_equal(affine_4x4(volume, 2), [[0, 0, 0, 7], [-1, 0, 0, 8], [0, 0, 1, 0], [0, 0, 0, 1]])
    assert affine_4x4(flat.astype(np.float32)).dtype == np.float64
