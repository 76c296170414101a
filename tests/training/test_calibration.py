"""Temperature scaling: the fitted temperature lowers the NLL of held-out samples; the metrics match hand values."""

from __future__ import annotations

import math

import pytest
import torch

from medseg_attn.training.calibration import apply_temperature, calibration_metrics, fit_temperature


def _overconfident(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax of logits 4x too sharp for the noise that decides the class (a Dice-trained network's habit)."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 3, (n,), generator=generator)
    evidence = torch.nn.functional.one_hot(targets, 3).float() + 0.8 * torch.randn(n, 3, generator=generator)
    return (4.0 * evidence).softmax(1), targets


def test_the_fitted_temperature_lowers_nll_and_ece_on_held_out_samples():
    fit_p, fit_t = _overconfident(20_000, seed=0)
    test_p, test_t = _overconfident(20_000, seed=1)
    temperature = fit_temperature(fit_p, fit_t)
    assert 2.5 < temperature < 6.0  # the 4x sharpening is found
    before = calibration_metrics(test_p, test_t)
    after = calibration_metrics(apply_temperature(test_p.clone(), temperature, dim=1), test_t)
    assert after["nll"] < 0.8 * before["nll"]
    assert after["ece"] < 0.5 * before["ece"] and after["ece"] < 0.02
    assert after["brier"] < before["brier"]
    # the argmax (the label map) never changes
    assert torch.equal(apply_temperature(test_p.clone(), temperature, dim=1).argmax(1), test_p.argmax(1))


def test_a_calibrated_model_keeps_a_temperature_near_one():
    generator = torch.Generator().manual_seed(2)
    p = torch.rand(30_000, 2, generator=generator)
    p = p / p.sum(1, keepdim=True)
    targets = (torch.rand(30_000, generator=generator) < p[:, 1]).long()  # classes drawn from p itself
    assert fit_temperature(p, targets) == pytest.approx(1.0, abs=0.1)


def test_metrics_match_hand_computed_values():
    p = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    t = torch.tensor([0, 1, 1])
    metrics = calibration_metrics(p, t, bins=10)
    assert metrics["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.8)) / 3, abs=1e-6)
    # bins: 0.9 (correct), 0.6 (wrong), 0.8 (correct): |0.9-1| + |0.6-0| + |0.8-1|, each 1/3
    assert metrics["ece"] == pytest.approx((0.1 + 0.6 + 0.2) / 3, abs=1e-6)
    assert metrics["brier"] == pytest.approx((0.02 + 0.72 + 0.08) / 3, abs=1e-6)
    with pytest.raises(ValueError, match="expected"):
        fit_temperature(p, torch.tensor([0, 1]))
