"""Our single-buffer sliding window equals MONAI's sliding_window_inference on softmax probabilities."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference

from medseg_attn.segmentation.inference.sliding import sliding_window_probabilities, window_starts


def test_window_starts_cover_the_axis():
    assert window_starts(10, 16, 0.5) == [0]
    assert window_starts(64, 32, 0.5) == [0, 16, 32]
    assert window_starts(70, 32, 0.5) == [0, 16, 32, 38]  # the last window ends at the edge
    assert window_starts(70, 32, 0.0) == [0, 32, 38]


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("shape", [(1, 40, 37, 29), (2, 20, 50, 12)])
def test_matches_monai(shape, blend):
    torch.manual_seed(0)
    network = torch.nn.Conv3d(shape[0], 4, 3, padding=1)
    image = torch.randn(*shape)
    ours = sliding_window_probabilities(network, image, (16, 24, 16), overlap=0.5, batch_size=3, blend=blend)
    theirs = sliding_window_inference(image[None], (16, 24, 16), 3, lambda x: network(x).softmax(1), overlap=0.5,
                                      mode=blend)[0]
    assert ours.shape == (4, *shape[1:])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.sum(0), torch.ones(shape[1:]), atol=1e-5, rtol=1e-5)


def test_overlap_per_axis_matches_monai():
    torch.manual_seed(0)
    network = torch.nn.Conv3d(1, 3, 3, padding=1)
    image = torch.randn(1, 40, 37, 29)
    ours = sliding_window_probabilities(network, image, (16, 24, 16), overlap=(0.5, 0.25, 0.0), batch_size=2)
    theirs = sliding_window_inference(image[None], (16, 24, 16), 2, lambda x: network(x).softmax(1),
                                      overlap=(0.5, 0.25, 0.0), mode="gaussian")[0]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_flips_average_and_half_precision():
    torch.manual_seed(1)
    network = torch.nn.Conv3d(1, 3, 3, padding=1)
    image = torch.randn(1, 24, 24, 24)
    flips = [(), (2,), (3,), (4,)]
    ours = sliding_window_probabilities(network, image, (16, 16, 16), flips=flips)
    by_hand = sum(sliding_window_probabilities(lambda x, f=f: network(x.flip(f)).flip(f) if f else network(x),
                                               image, (16, 16, 16)) for f in flips) / len(flips)
    torch.testing.assert_close(ours, by_hand, atol=1e-5, rtol=1e-4)
    half = sliding_window_probabilities(network, image, (16, 16, 16), dtype=torch.float16)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), sliding_window_probabilities(network, image, (16, 16, 16)), atol=2e-3,
                               rtol=1e-2)


def test_small_images_are_padded_with_the_given_value():
    import torch as _torch

    from medseg_attn.segmentation.inference.sliding import sliding_window_probabilities as _probabilities

    def forward(x):  # logits from the window's mean: the padding shows in the answer
        mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True).expand(x.shape[0], 1, *x.shape[2:])
        return _torch.cat([mean, _torch.zeros_like(mean)], dim=1)

    image = _torch.full((1, 8, 8, 4), -5.0)
    padded = _probabilities(forward, image, (8, 8, 8), pad_value=-5.0)
    zeros = _probabilities(forward, image, (8, 8, 8))
    assert padded.shape == (2, 8, 8, 4)
    assert _torch.allclose(padded[0], _torch.sigmoid(_torch.tensor(-5.0)).expand(8, 8, 4), atol=1e-5)
    assert zeros[0].mean() > padded[0].mean() + 0.05  # zero padding would shift the answer


def test_class_labels_equal_argmax_with_ties_and_chunks():
    from medseg_attn.segmentation.inference.resample import class_labels

    torch.manual_seed(0)
    p = torch.rand(3, 17, 9, 5)
    p[1, :4] = p[2, :4] = 2.0  # ties between classes 1 and 2: the lower class wins, as argmax
    for chunk in (7, 1 << 22):  # chunk boundaries do not change the answer
        labels = class_labels(p, chunk=chunk)
        assert labels.dtype == torch.uint8 and labels.shape == (17, 9, 5)
        assert torch.equal(labels.long(), p.argmax(0))
    assert (class_labels(p)[:4] == 1).all()
    many = torch.rand(300, 4, 4)
    assert class_labels(many).dtype == torch.int32 and torch.equal(class_labels(many).long(), many.argmax(0))
