"""Flip test-time augmentation: probabilities averaged over every flip of the spatial axes."""

from __future__ import annotations

import torch
from torch import nn

from medseg_attn.config import InferenceConfig
from medseg_attn.segmentation.data.transforms import Preprocessing
from medseg_attn.segmentation.inference.predictor import Predictor


class CountingNetwork(nn.Module):
    """Logits favour class 1 on the left half of the first axis; counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        ramp = torch.linspace(1, -1, x.shape[2]).view(1, 1, -1, 1, 1).expand(x.shape[0], 1, *x.shape[2:])
        return torch.cat([-ramp, ramp], dim=1) * 5


def test_tta_averages_all_flips():
    prep = Preprocessing(None, "RAS", "none", (0, 1), False, 3)
    image = torch.zeros(1, 16, 16, 16)
    plain_net, tta_net = CountingNetwork(), CountingNetwork()
    plain = Predictor(plain_net, prep, {0: "a", 1: "b"}, (16, 16, 16), InferenceConfig(), "cpu").infer(image)
    tta = Predictor(tta_net, prep, {0: "a", 1: "b"}, (16, 16, 16), InferenceConfig(tta=True), "cpu").infer(image)
    assert tta_net.calls == 8 * plain_net.calls  # 2^3 flip combinations
    # the network is not flip-equivariant along axis 0: averaging with the flipped passes pulls it to 0.5
    assert plain[1, 0].mean() > 0.95 and abs(float(tta[1].mean()) - 0.5) < 1e-4
    torch.testing.assert_close(tta.sum(0), torch.ones(16, 16, 16))
