"""MultiHeadAttention against softmax(QK^T/sqrt(d))V written out by hand; window and mask helpers."""

from __future__ import annotations

import math

import pytest
import torch

from medseg_attn.networks import (
    MultiHeadAttention,
    pad_to_multiple,
    padding_key_mask,
    reference_attention,
    window_merge,
    window_partition,
)


def _by_hand(block: MultiHeadAttention, query: torch.Tensor, key_value: torch.Tensor, mask=None) -> torch.Tensor:
    """Project first, split into heads, softmax(QK^T/sqrt(d))V per head, concatenate, project out."""
    batch, n, dim = query.shape
    m = key_value.shape[1]
    heads, d = block.heads, block.head_dim
    q = query @ block.q.weight.T + block.q.bias
    kv = key_value @ block.kv.weight.T + block.kv.bias
    k, v = kv[..., :dim], kv[..., dim:]
    out = torch.zeros(batch, n, dim)
    for b in range(batch):
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            scores = q[b, :, cols] @ k[b, :, cols].T / math.sqrt(d)  # (N, M)
            if mask is not None:
                scores = scores.masked_fill(~mask[b % mask.shape[0], 0, 0][None, :m], float("-inf"))
            out[b, :, cols] = torch.softmax(scores, dim=-1) @ v[b, :, cols]
    return out @ block.proj.weight.T + block.proj.bias


@pytest.mark.parametrize("spatial", [(8, 12), (4, 8, 12)], ids=["2d", "3d"])
@pytest.mark.parametrize("heads", [1, 4])
def test_matches_hand_computed_attention_on_window_tokens(spatial, heads):
    torch.manual_seed(0)
    dim = 16
    block = MultiHeadAttention(dim, heads).eval()
    window = (4,) * len(spatial)
    decoder = torch.randn(2, dim, *spatial)
    encoder = torch.randn(2, dim, *spatial)
    query = window_partition(decoder, window)  # (B*nW, M, C)
    key_value = window_partition(encoder, window)
    expected = _by_hand(block, query, key_value)
    torch.testing.assert_close(block(query, key_value), expected, atol=1e-5, rtol=1e-4)


def test_self_attention_global_and_weights():
    torch.manual_seed(1)
    block = MultiHeadAttention(32, 2).eval()
    tokens = torch.randn(3, 50, 32)
    out, weights = block(tokens, return_weights=True)
    torch.testing.assert_close(out, _by_hand(block, tokens, tokens), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out, block(tokens), atol=1e-5, rtol=1e-4)  # SDPA path == explicit path
    assert weights.shape == (3, 2, 50, 50)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 50))


def test_reference_attention_is_plain_formula():
    torch.manual_seed(2)
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    scores = torch.zeros(2, 3, 5, 7)
    for i in range(5):
        for j in range(7):
            scores[:, :, i, j] = (q[:, :, i] * k[:, :, j]).sum(-1) / math.sqrt(8)
    expected = torch.softmax(scores, -1) @ v
    torch.testing.assert_close(reference_attention(q, k, v), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.nn.functional.scaled_dot_product_attention(q, k, v), expected,
                               atol=1e-5, rtol=1e-4)


def test_mask_hides_padded_keys():
    torch.manual_seed(3)
    block = MultiHeadAttention(8, 2).eval()
    x = torch.randn(1, 8, 5, 6, 7)
    padded, pads = pad_to_multiple(x, (4, 4, 4))
    assert padded.shape[2:] == (8, 8, 8) and pads == (3, 2, 1)
    mask = padding_key_mask(padded.shape[2:], pads, (4, 4, 4), batch=1)
    tokens = window_partition(padded, (4, 4, 4))
    assert mask.shape == (tokens.shape[0], 1, 1, 64)
    assert int(mask.sum()) == 5 * 6 * 7  # every real voxel is a visible key exactly once
    out = block(tokens, tokens, mask=mask)
    torch.testing.assert_close(out, _by_hand(block, tokens, tokens, mask), atol=1e-5, rtol=1e-4)
    # the first window holds real and padded voxels: its result must not depend on the padded keys' values
    noisy = padded.clone()
    noisy[:, :, 5:, :, :] = 100.0
    out_noisy = block(window_partition(noisy, (4, 4, 4)), window_partition(noisy, (4, 4, 4)), mask=mask)
    torch.testing.assert_close(out_noisy[1, :, :][mask[1, 0, 0]], out[1, :, :][mask[1, 0, 0]])
    assert padding_key_mask((8, 8, 8), (0, 0, 0), (4, 4, 4), batch=1) is None


@pytest.mark.parametrize("shape,window", [((2, 3, 8, 12), (4, 6)), ((2, 5, 4, 8, 6), (2, 4, 3))])
def test_window_partition_roundtrip_and_layout(shape, window):
    x = torch.randn(*shape)
    tokens = window_partition(x, window)
    windows = math.prod(s // w for s, w in zip(shape[2:], window))
    assert tokens.shape == (shape[0] * windows, math.prod(window), shape[1])
    first = x[0][(slice(None),) + tuple(slice(0, w) for w in window)]  # (C, *window)
    torch.testing.assert_close(tokens[0], first.reshape(shape[1], -1).T)
    torch.testing.assert_close(window_merge(tokens, window, shape[2:]), x)


def test_dropout_only_in_training():
    torch.manual_seed(4)
    block = MultiHeadAttention(16, 2, attn_dropout=0.5, proj_dropout=0.5)
    tokens = torch.randn(2, 20, 16)
    block.eval()
    torch.testing.assert_close(block(tokens), block(tokens))
    block.train()
    assert not torch.allclose(block(tokens), block(tokens))


def test_heads_must_divide_dim():
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadAttention(10, 3)


@pytest.mark.parametrize("shape, pool", [((2, 3, 8, 12, 4), 4), ((1, 2, 6, 4), 2)])
def test_block_mean_and_block_update_match_pooling_and_repetition(shape, pool):
    from medseg_attn.networks.attention import add_block_update, block_mean

    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    update = torch.randn(*shape[:2], *[s // pool for s in shape[2:]], dtype=torch.float64, requires_grad=True)
    avg_pool = torch.nn.functional.avg_pool3d if len(shape) == 5 else torch.nn.functional.avg_pool2d
    torch.testing.assert_close(block_mean(x, pool), avg_pool(x, pool))
    repeated = update
    for axis in range(2, update.dim()):
        repeated = repeated.repeat_interleave(pool, axis)
    torch.testing.assert_close(add_block_update(x, update, pool), x + repeated)
    # the hand-written backward passes agree with finite differences
    assert torch.autograd.gradcheck(lambda a: block_mean(a, pool), (x,))
    assert torch.autograd.gradcheck(lambda a, b: add_block_update(a, b, pool), (x, update))


def test_pooled_network_trains_under_cpu_bf16_autocast():
    # train.amp: on runs the step under bf16 autocast: the pooled levels' backward meets bf16 gradients
    from medseg_attn.networks import AttentionSkipUNet

    torch.manual_seed(0)
    network = AttentionSkipUNet(3, 1, 3, channels=(8, 16, 32, 64)).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = network(torch.randn(1, 1, 32, 32, 32))
    logits.float().square().mean().backward()
    grads = [p.grad for p in network.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
