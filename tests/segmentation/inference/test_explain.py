"""Explanation maps: attention received (reduced on the fly), uncertainty, ensembles, and their geometry.

The acceptance test builds an attention block whose weights send all attention to one known key token and checks
that the written map peaks on that token's voxels once it is brought back to an LPS, anisotropic input grid.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai import transforms as mt
from torch import nn

from medseg_attn.config import InferenceConfig
from medseg_attn.networks import AttentionSkipUNet
from medseg_attn.networks.attention import MultiHeadAttention
from medseg_attn.segmentation.data.transforms import Preprocessing, preprocessing
from medseg_attn.segmentation.inference.predictor import Predictor
from medseg_attn.segmentation.workflows.batch import predict_files
from medseg_attn.segmentation.workflows.tensorboard_images import validation_attention_images

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from explain_factory import LABELS, grids, write_checkpoint, write_volume  # noqa: E402


def test_received_attention_is_the_weights_summed_over_real_queries():
    torch.manual_seed(0)
    block = MultiHeadAttention(16, heads=4).eval()
    query, key_value = torch.randn(3, 50, 16), torch.randn(3, 50, 16)
    keep = torch.rand(3, 50) > 0.2  # real tokens (the rest: padding)
    mask = keep[:, None, None, :]  # (B, 1, 1, M)
    with torch.no_grad():
        expected_out, weights = block(query, key_value, mask=mask, return_weights=True)  # (B, h, N, M)
        # tiny chunks: the reduction runs over 13 chunks of queries and must not depend on them
        q = block.q(query).view(3, 50, 4, 4).transpose(1, 2)
        kv = block.kv(key_value).view(3, 50, 2, 4, 4).permute(2, 0, 3, 1, 4)
        _, chunked = block.attend_received(q, kv[0], kv[1], mask, keep, max_elements=3 * 4 * 50 * 4)
        out, received = block(query, key_value, mask=mask, return_received=True, query_mask=keep)
    expected = (weights * keep[:, None, :, None]).sum(2)  # (B, h, M)
    torch.testing.assert_close(received, expected)
    torch.testing.assert_close(chunked, expected)
    torch.testing.assert_close(out, expected_out)
    assert float(received[~keep[:, None, :].expand_as(received)].abs().max()) == 0.0  # padding receives nothing
    # every real query hands out exactly one unit of attention per head
    torch.testing.assert_close(received.sum(-1), keep.sum(-1, keepdim=True).float().expand(3, 4))


def test_forward_with_attention_keeps_the_logits_and_covers_the_input():
    torch.manual_seed(0)
    net = AttentionSkipUNet(3, 1, 3, channels=(8, 16, 32, 64), head_dim=8).eval()
    x = torch.randn(1, 1, 36, 28, 20)  # not a multiple of the divisor: padded inside
    with torch.no_grad():
        logits, maps = net.forward_with_attention(x)
        _, heads = net.forward_with_attention(x, per_head=True)
        torch.testing.assert_close(logits, net(x))
    assert list(maps) == net.attention_levels == ["level0", "level1", "level2"]
    for level, values in maps.items():
        assert values.shape == (1, 1, 36, 28, 20) and torch.isfinite(values).all() and values.min() >= 0
        assert heads[level].shape[1] == net.skip_attention[int(level[-1])].attention.heads
        torch.testing.assert_close(heads[level].mean(1, keepdim=True), values)
    with pytest.raises(ValueError, match="attention=False"):
        AttentionSkipUNet(3, 1, 3, channels=(8, 16), attention=False).forward_with_attention(x)


def _dominant_token(position: tuple[int, int, int], window: int = 16):
    """Set one skip level's weights so that every query sends (almost) all its attention to the key at
    ``position`` of the window: its position embedding carries a large component that the query looks for."""
    def edit(network: AttentionSkipUNet) -> None:
        block = network.skip_attention[0]
        channels = block.attention.dim
        with torch.no_grad():
            block.position.zero_()
            block.position[np.ravel_multi_index(position, (window,) * 3), 0] = 50.0
            block.attention.q.weight.zero_()
            block.attention.q.bias.zero_()
            block.attention.q.bias[0] = 10.0  # every query: 10 * e0
            block.attention.kv.weight[:channels] = torch.eye(channels)  # keys = the (normalised) tokens
            block.attention.kv.bias[:channels] = 0.0
    return edit


@pytest.mark.parametrize("pool, token", [(1, (4, 11, 9)), (2, (2, 5, 4))])
def test_map_peaks_on_the_attended_token_after_resampling_to_an_lps_anisotropic_grid(tmp_path, pool, token):
    # off-centre, on level 0's token grid: 16^3 voxel tokens of the 32^3 window at stride 2, or 8^3 tokens of
    # 2x2x2 voxels (attention_pool 2)
    window = 16 // pool
    checkpoint = write_checkpoint(
        tmp_path / "dominant.pt", model={"channels": [8, 16], "window_size": window, "global_levels": 0,
                                         "first_stride": 2, "attention_pool": [pool]}, spacing=(2.0, 2.0, 2.0),
        patch=(32, 32, 32), edit=_dominant_token(token, window))
    # LPS, 1.5 x 1.5 x 4 mm: the network's 2 mm RAS grid differs from it in orientation and voxel size
    shape = (36, 40, 14)
    affine = np.diag([-1.5, -1.5, 4.0, 1.0])
    affine[:3, 3] = [20.0, 30.0, -25.0]
    volume = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    source = write_volume(tmp_path / "lps_aniso.nii.gz", volume, affine)

    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    predict_files(predictor, [source], tmp_path / "out", attention_maps=True, progress=False)
    written = nib.load(str(tmp_path / "out" / "lps_aniso_attention_level0.nii.gz"))
    values = written.get_fdata()
    assert written.shape == shape and np.allclose(written.affine, affine)

    # where the token's voxels are in the world: network grid (as predict preprocesses), window padding, stride
    network_image = mt.Compose(preprocessing(predictor.prep, keys=("image",)))({"image": str(source)})["image"]
    net_shape = np.array(network_image.shape[1:])
    assert np.all(net_shape <= 32)  # one sliding window, centred: the image sits `before` voxels into it
    before = (32 - net_shape) // 2
    size = 2 * pool  # network voxels per token side: stride 2 x pool
    centre_voxel = size * np.array(token) + (size - 1) / 2 - before  # centre of the token's block, network voxels
    net_affine = np.asarray(network_image.affine, dtype=np.float64)
    expected = (net_affine @ np.append(centre_voxel, 1.0))[:3]

    peak = np.unravel_index(np.argmax(values), shape)
    world = (affine @ np.append(peak, 1.0))[:3]
    tolerance = pool * 2.0 + np.array([1.5, 1.5, 4.0]) / 2  # half a token block (2 mm x size) + half an input voxel
    assert np.all(np.abs(world - expected) <= tolerance), (world, expected)
    # nothing else is bright: every voxel above half the maximum lies on the token's block
    index = np.stack(np.nonzero(values > 0.5), axis=1)
    points = (affine[:3, :3] @ index.T).T + affine[:3, 3]
    assert len(index) and np.all(np.abs(points - expected) <= pool * 4.0 + np.array([1.5, 1.5, 4.0]))
    far = np.linalg.norm(((affine[:3, :3] @ np.indices(shape).reshape(3, -1)).T + affine[:3, 3]) - expected, axis=1)
    assert values.reshape(-1)[far > pool * 12.0].max() < 0.02


class FixedProbabilities(nn.Module):
    """Logits that give class probabilities p (the same everywhere)."""

    def __init__(self, probabilities: list[float]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.log(torch.tensor(probabilities)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.view(1, -1, 1, 1, 1).expand(x.shape[0], -1, *x.shape[2:])


def _entropy(p: list[float]) -> float:
    return -sum(v * math.log(v) for v in p if v > 0) / math.log(len(p))


def test_uncertainty_is_the_normalised_entropy_of_the_ensemble_average(tmp_path):
    prep = Preprocessing(None, "RAS", "none", (0, 1), False, 3)
    members = [FixedProbabilities([0.8, 0.1, 0.1]), FixedProbabilities([0.2, 0.7, 0.1])]
    ensemble = Predictor(members, prep, LABELS, (16, 16, 16), InferenceConfig(), "cpu")
    volume, affine = grids()["lps"]
    result = ensemble.predict(volume, uncertainty=True, probabilities=True, affine=affine)
    average = [0.5, 0.4, 0.1]
    assert result.uncertainty.shape == volume.shape and result.labels.shape == volume.shape
    np.testing.assert_allclose(result.probabilities[:, 5, 5, 5], average, atol=1e-5)
    np.testing.assert_allclose(result.uncertainty, _entropy(average), atol=1e-5)
    assert (result.labels == 0).all()
    mean, inside = result.uncertainty_means()
    assert mean == pytest.approx(_entropy(average), abs=1e-5) and math.isnan(inside)  # no foreground
    single = Predictor(members[0], prep, LABELS, (16, 16, 16), InferenceConfig(), "cpu")
    np.testing.assert_allclose(single.predict(volume, uncertainty=True, affine=affine).uncertainty,
                               _entropy([0.8, 0.1, 0.1]), atol=1e-5)
    uniform = Predictor(FixedProbabilities([1 / 3] * 3), prep, LABELS, (16, 16, 16), InferenceConfig(), "cpu")
    np.testing.assert_allclose(uniform.predict(volume, uncertainty=True, affine=affine).uncertainty, 1.0, atol=1e-5)

    # the batch report carries the means
    source = write_volume(tmp_path / "case.nii.gz", volume, affine)
    records = predict_files(ensemble, [source], tmp_path / "out", uncertainty=True, progress=False)
    assert records[0]["status"] == "ok", records
    with (tmp_path / "out" / "report.csv").open() as handle:
        row = next(csv.DictReader(handle))
    assert float(row["uncertainty_mean"]) == pytest.approx(_entropy(average), abs=1e-4)
    assert row["uncertainty_foreground_mean"] == ""
    assert (tmp_path / "out" / "case_overlay.png").stat().st_size > 5000
    with pytest.raises(ValueError, match="has no attention maps"):
        ensemble.predict(volume, attention_maps=True, affine=affine)


def test_python_api_returns_arrays_on_the_input_grid(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "model.pt")
    predictor = Predictor.from_checkpoint([checkpoint, write_checkpoint(tmp_path / "second.pt", seed=1)], device="cpu")
    assert len(predictor.networks) == 2
    volume, affine = grids()["aniso"]
    source = write_volume(tmp_path / "aniso.nii.gz", volume, affine)
    from_file = predictor.predict(source, attention_maps=True, attention_heads=True, uncertainty=True)
    from_array = predictor.predict(volume, attention_maps=True, uncertainty=True, affine=affine)
    for result in (from_file, from_array):
        np.testing.assert_allclose(result.affine, affine)
        assert result.labels.shape == result.uncertainty.shape == result.image.shape == volume.shape
        assert set(result.attention) == {"level0", "level1"}
    np.testing.assert_array_equal(from_file.labels, from_array.labels)
    for level, values in from_array.attention.items():
        assert values.shape == volume.shape and values.max() == pytest.approx(1.0) and values.min() >= 0
        heads = from_file.attention[level]
        assert heads.shape[1:] == volume.shape and heads.shape[0] >= 1
        assert np.allclose(heads.reshape(heads.shape[0], -1).max(1), 1.0)


def test_attention_maps_refused_without_attention(tmp_path):
    off = Predictor.from_checkpoint(write_checkpoint(tmp_path / "off.pt", model={"attention": False}), device="cpu")
    with pytest.raises(ValueError, match=r"off\.pt: has no attention maps: this model was trained with attention off"):
        off.attention_levels()
    monai = Predictor.from_checkpoint(write_checkpoint(tmp_path / "monai.pt", model={"architecture": "monai_unet"}),
                                      device="cpu")
    with pytest.raises(ValueError, match=r"monai\.pt: has no attention maps: this model is a UNet"):
        monai.attention_levels()


def test_validation_attention_images_one_picture_per_level():
    torch.manual_seed(0)
    net = AttentionSkipUNet(3, 1, 3, channels=(8, 16, 32), head_dim=8)
    net.train()
    image = torch.randn(1, 40, 36, 24)
    label = torch.zeros(40, 36, 24)
    label[10:30, 10:20, 5:15] = 1
    pictures = validation_attention_images(net, image, label=label, patch_size=(32, 32, 16))
    assert net.training  # left as it was
    assert list(pictures) == ["level0", "level1"]
    for picture in pictures.values():
        assert picture.dtype == np.uint8 and picture.shape == (36, 40, 3)  # axial slice, rotated for display
    whole = validation_attention_images(net, image[None])
    assert list(whole) == ["level0", "level1"]
    assert validation_attention_images(AttentionSkipUNet(3, 1, 3, channels=(8, 16), attention=False), image) == {}


def test_an_ensemble_of_differently_trained_models_is_refused(tmp_path):
    first = write_checkpoint(tmp_path / "two_mm.pt")
    other = write_checkpoint(tmp_path / "native.pt", spacing=None)
    with pytest.raises(ValueError, match=r"native\.pt: ensemble member differs from .*two_mm\.pt in its preprocessing"):
        Predictor.from_checkpoint([first, other], device="cpu")
