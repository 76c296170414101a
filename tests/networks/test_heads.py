"""ClassificationHead / AttentionClassifier: shapes in 2D/3D, attention on/off, the shared encoder, multi-task."""

from __future__ import annotations

import pytest
import torch

from medseg_attn.networks import (
    AttentionClassifier,
    AttentionSkipUNet,
    ClassificationHead,
    MultiHeadAttention,
)


@pytest.mark.parametrize("pooling", ["class_token", "attention"])
@pytest.mark.parametrize("attention", [True, False], ids=["attention", "baseline"])
@pytest.mark.parametrize("dims,shape", [(2, (3, 3, 37, 50)), (3, (2, 1, 19, 26, 13))], ids=["2d", "3d"])
def test_classifier_shapes_and_gradients(dims, shape, attention, pooling):
    torch.manual_seed(0)
    net = AttentionClassifier(dims, shape[1], 5, channels=(8, 16, 32), attention=attention, pooling=pooling,
                              layers=2)
    x = torch.randn(*shape, requires_grad=True)
    logits = net(x)
    assert logits.shape == (shape[0], 5)
    logits.logsumexp(1).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    unused = [name for name, p in net.named_parameters() if p.grad is None]
    assert not unused, unused
    assert any(isinstance(m, MultiHeadAttention) for m in net.modules()) == attention


def test_baseline_is_global_average_pooling_and_the_same_mlp():
    torch.manual_seed(0)
    features = torch.randn(4, 32, 5, 6, 7)  # (B, C, *S)
    head = ClassificationHead(3, 32, 3, attention=False).eval()
    expected = head.mlp(head.norm(features.mean(dim=(2, 3, 4))))  # GAP -> LayerNorm -> MLP, by hand
    torch.testing.assert_close(head(features), expected)
    with_attention = ClassificationHead(3, 32, 3, attention=True)
    extra = {n for n, _ in with_attention.named_parameters()} - {n for n, _ in head.named_parameters()}
    assert extra and all(n.split(".")[0] in ("position", "class_token", "blocks") for n in extra)


def test_class_token_attention_map_covers_the_bottleneck():
    torch.manual_seed(0)
    net = AttentionClassifier(2, 1, 4, channels=(8, 16, 32, 64)).eval()
    maps = net.attention_map(torch.randn(2, 1, 64, 48))
    assert maps.shape == (2, 4, 8, 6)  # 64 channels / head_dim 16 = 4 heads; 64x48 / 8 per axis
    share = maps.sum(dim=(2, 3))  # the rest of each softmax row is the class token attending to itself
    assert (maps >= 0).all() and (share > 0).all() and (share <= 1 + 1e-6).all()
    with pytest.raises(ValueError, match="attention=False"):
        AttentionClassifier(2, 1, 4, channels=(8, 16), attention=False).attention_map(torch.randn(1, 1, 8, 8))


def test_large_maps_are_pooled_to_at_most_max_tokens():
    head = ClassificationHead(3, 16, 2, max_tokens=64)
    tokens, grid = head.tokens(torch.randn(1, 16, 20, 9, 30))
    assert grid == (4, 4, 4) and tokens.shape == (1, 64, 16)
    assert head(torch.randn(1, 16, 20, 9, 30)).shape == (1, 2)


def test_the_encoder_is_the_segmentation_unets_encoder():
    """A segmentation U-Net's weights load into the classifier's backbone, which then encodes identically."""
    torch.manual_seed(0)
    unet = AttentionSkipUNet(2, 1, 3, channels=(8, 16, 32), first_stride=1).eval()
    classifier = AttentionClassifier(2, 1, 4, channels=(8, 16, 32), first_stride=1).eval()
    missing, unexpected = classifier.backbone.load_state_dict(unet.state_dict(), strict=False)
    assert not missing  # every encoder weight came from the U-Net
    assert unexpected and not any(k.startswith("encoders.") for k in unexpected)  # only the decoder is left out
    x = torch.randn(2, 1, 40, 40)
    for a, b in zip(unet.encode(x), classifier.backbone.encode(x)):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(unet(x), unet.decode(unet.encode(x), x.shape[2:]))  # forward = encode + decode
    with pytest.raises(ValueError, match="encoder only"):
        classifier.backbone(x)


def test_multitask_returns_class_and_segmentation_logits():
    torch.manual_seed(0)
    net = AttentionClassifier(3, 1, 4, channels=(8, 16, 32), segmentation_classes=3, first_stride=2)
    class_logits, segmentation = net(torch.randn(2, 1, 20, 18, 22))
    assert class_logits.shape == (2, 4) and segmentation.shape == (2, 3, 20, 18, 22)
    (class_logits.sum() + segmentation.mean()).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_bad_arguments():
    with pytest.raises(ValueError, match="pooling"):
        ClassificationHead(2, 16, 3, pooling="max")
    with pytest.raises(ValueError, match="at least 2 classes"):
        ClassificationHead(2, 16, 1)
