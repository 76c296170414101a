"""AttentionSkipUNet: shapes in 2D/3D, attention on/off, odd sizes, the matched baseline, bounded windows."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medseg_attn.networks import AttentionSkipUNet, SkipAttention


@pytest.mark.parametrize("attention", [True, False], ids=["attention", "baseline"])
@pytest.mark.parametrize("first_stride", [1, 2])
@pytest.mark.parametrize("dims,shape", [(2, (2, 3, 37, 50)), (3, (1, 1, 19, 26, 13))], ids=["2d", "3d"])
def test_forward_backward_any_size(dims, shape, attention, first_stride):
    torch.manual_seed(0)
    net = AttentionSkipUNet(dims, shape[1], 4, channels=(8, 16, 32), attention=attention,
                            first_stride=first_stride, window_size=2)
    x = torch.randn(*shape, requires_grad=True)
    logits = net(x)
    assert logits.shape == (shape[0], 4, *shape[2:])
    logits.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)


def test_baseline_is_the_same_unet_without_attention():
    torch.manual_seed(0)
    with_attention = AttentionSkipUNet(3, 1, 3, channels=(8, 16, 32, 64))
    baseline = AttentionSkipUNet(3, 1, 3, channels=(8, 16, 32, 64), attention=False)
    extra = {name for name, _ in with_attention.named_parameters()} - {n for n, _ in baseline.named_parameters()}
    assert extra and all(name.startswith("skip_attention.") for name in extra)
    assert not any(isinstance(m, SkipAttention) for m in baseline.modules())
    assert sum(isinstance(m, SkipAttention) for m in with_attention.modules()) == 3  # one per skip connection
    # the attention output projection starts at zero: at initialisation both networks compute the same function
    missing, unexpected = with_attention.load_state_dict(baseline.state_dict(), strict=False)
    assert not unexpected and set(missing) == extra
    x = torch.randn(1, 1, 32, 32, 32)
    torch.testing.assert_close(with_attention.eval()(x), baseline.eval()(x))


def test_deep_supervision_outputs():
    net = AttentionSkipUNet(3, 1, 2, channels=(8, 16, 32, 64), deep_supervision=True)
    outputs = net(torch.randn(2, 1, 32, 32, 32))
    # first_stride 2: decoder levels sit at 1/2, 1/4, 1/8; level 0 feeds the full-resolution head
    assert [tuple(o.shape[2:]) for o in outputs] == [(32, 32, 32), (8, 8, 8), (4, 4, 4)]
    assert net.eval()(torch.randn(1, 1, 32, 32, 32)).shape == (1, 2, 32, 32, 32)


@pytest.mark.parametrize("pool, windows", [((), [64, 8, 1]), ((2, 2), [8, 1, 1]), ((4, 2), [1, 1, 1])])
def test_attention_weights_per_level_are_distributions(pool, windows):
    torch.manual_seed(0)
    net = AttentionSkipUNet(3, 1, 3, channels=(8, 16, 32, 64), window_size=4, global_levels=1,
                            attention_pool=pool).eval()
    with torch.no_grad():
        weights = net.attention_weights(torch.randn(1, 1, 32, 32, 32))
    # first_stride 2: skip levels at 16^3 (windows of 4^3), 8^3 (windows of 4^3), 4^3 (global); pooled levels
    # attend over pool^3-voxel tokens (16^3 / pool^3 and 8^3 / pool^3 tokens); heads = channels // head_dim(16)
    assert [tuple(w.shape) for w in weights] == [(windows[0], 1, 64, 64), (windows[1], 1, 64, 64),
                                                 (windows[2], 2, 64, 64)]
    for w in weights:
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    with pytest.raises(ValueError, match="attention=False"):
        AttentionSkipUNet(3, 1, 3, attention=False).attention_weights(torch.randn(1, 1, 32, 32, 32))


def test_pooled_attention_is_voxel_attention_on_block_averages():
    """pool=2 equals the pool=1 block run on the 2x2x2 block means, its update repeated onto each block."""
    torch.manual_seed(0)
    pooled = SkipAttention(3, 16, 2, window=(4, 4, 4), pool=2)
    torch.nn.init.normal_(pooled.attention.proj.weight, std=0.2)
    plain = SkipAttention(3, 16, 2, window=(4, 4, 4))
    plain.load_state_dict(pooled.state_dict())
    skip, gate = torch.randn(2, 16, 16, 16, 12), torch.randn(2, 16, 16, 16, 12)
    coarse_skip, coarse_gate = F.avg_pool3d(skip, 2), F.avg_pool3d(gate, 2)  # (2, 16, 8, 8, 6)
    update = plain(coarse_skip, coarse_gate) - coarse_skip
    expected = skip + update.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    torch.testing.assert_close(pooled(skip, gate), expected)
    assert (pooled(skip, gate) - skip).abs().max() > 1e-2  # the block does change the skip
    with pytest.raises(ValueError, match="pool"):
        SkipAttention(3, 16, 2, window=(4, 4, 4), pool=0)


def test_pooled_levels_set_the_padding_multiple():
    assert AttentionSkipUNet(3, 1, 2, attention_pool=()).divisor == 32  # 2 * 2**4: the encoder alone
    assert AttentionSkipUNet(3, 1, 2).divisor == 32  # default pools fit it: 2*4*4 and 2*2*2*4 divide 32
    net = AttentionSkipUNet(3, 1, 2, channels=(8, 16, 32), attention_pool=(2, 2))
    assert net.divisor == 16  # level 0 (stride 2) with 2-voxel tokens in 4-token windows: 2*2*4 (level 1 is global)
    # an encoder alone (classification backbone) pads as its U-Net does
    assert AttentionSkipUNet(3, 1, 2, channels=(8, 16, 32), attention_pool=(2, 2), decoder=False).divisor == 16
    assert AttentionSkipUNet(3, 1, 2, channels=(8, 16, 32), attention=False, attention_pool=(2, 2)).divisor == 16
    assert AttentionSkipUNet(3, 1, 2, channels=(8, 16, 32), attention_pool=()).divisor == 8
    x = torch.randn(1, 1, 19, 23, 17)
    assert net.eval()(x).shape == (1, 2, 19, 23, 17)


def test_windows_bound_memory_on_large_maps():
    local = SkipAttention(3, 16, 1, window=(4, 4, 4))
    assert local.window_for((96, 96, 96)) == (4, 4, 4)
    assert local.window_for((2, 8, 8)) == (2, 4, 4)
    global_block = SkipAttention(3, 64, 4, window=None, global_max_tokens=4096)
    assert global_block.window_for((8, 8, 8)) == (8, 8, 8)  # small map: truly global
    big = global_block.window_for((64, 64, 40))  # large map: tiled, tokens per window bounded
    assert math.prod(big) <= 4096
    # the score matrix per window is at most 4096^2 no matter how big the volume: linear total memory
    x = torch.randn(1, 8, 24, 20, 18)
    block = SkipAttention(3, 8, 2, window=None, global_max_tokens=512)
    out, weights = block(x, x, return_weights=True)
    assert out.shape == x.shape and weights.shape[-1] <= 512


def test_a_one_layer_decoder_is_lighter_and_old_checkpoints_keep_two():
    from torch.utils.flop_counter import FlopCounterMode

    from medseg_attn.training.checkpoint import upgrade_config

    def flops(network):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            network(torch.zeros(1, 1, 32, 32, 32))
        return counter.get_total_flops()

    full, light = (AttentionSkipUNet(3, 1, 3, channels=(8, 16, 32), decoder_layers=n) for n in (2, 1))
    assert light(torch.randn(1, 1, 20, 24, 28)).shape == (1, 3, 20, 24, 28)
    assert flops(light) < 0.8 * flops(full)
    assert all(block.conv2 is None and block.shortcut is None for block in light.decoders)
    assert all(block.conv2 is not None for block in light.encoders)  # the encoder keeps its residual blocks
    assert upgrade_config({"model": {"attention_pool": [4, 2]}})["model"]["decoder_layers"] == 2
    with pytest.raises(ValueError, match="1 or 2 layers"):
        AttentionSkipUNet(3, 1, 3, decoder_layers=3)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="spatial_dims"):
        AttentionSkipUNet(4, 1, 2)
    with pytest.raises(ValueError, match="first_stride"):
        AttentionSkipUNet(3, 1, 2, first_stride=3)


@pytest.mark.parametrize("dims", [2, 3])
def test_upsample_head_is_the_transposed_convolution_forward_and_backward(dims):
    from medseg_attn.networks.unet import UpsampleHead

    torch.manual_seed(0)
    head = UpsampleHead(dims, 5, 3)
    reference = {2: torch.nn.ConvTranspose2d, 3: torch.nn.ConvTranspose3d}[dims](5, 3, 3, stride=2, padding=1,
                                                                                   output_padding=1)
    reference.load_state_dict(head.state_dict())  # the same parameter names: old checkpoints load
    x = torch.randn(2, 5, *(6, 7, 5)[:dims], requires_grad=True)
    ours, theirs = head(x), reference(x)
    assert ours.shape == theirs.shape == (2, 3, *(12, 14, 10)[:dims])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad((ours * grad).sum(), [x, head.weight, head.bias]),
                    torch.autograd.grad((theirs * grad).sum(), [x, reference.weight, reference.bias])):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dims", [2, 3])
def test_pooled_gate_from_the_coarse_map_equals_pooling_the_upsampled_map(dims):
    torch.manual_seed(0)
    network = AttentionSkipUNet(dims, 1, 3, channels=(8, 16, 32, 64), attention_pool=(4, 2))
    features = network.encode(torch.randn(2, 1, *(64,) * dims))
    for level in (0, 1):
        coarse = features[level + 1] + 0.1 * torch.randn_like(features[level + 1])
        pooled = network._pooled_gate(level, coarse)
        expected = F.avg_pool3d if dims == 3 else F.avg_pool2d
        pool = network.skip_attention[level].pool
        torch.testing.assert_close(pooled, expected(network.upsamples[level](coarse), pool), atol=1e-5, rtol=1e-4)
    assert network._pooled_gate(2, features[3]) is None  # an unpooled level
