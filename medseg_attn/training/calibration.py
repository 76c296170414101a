"""Temperature scaling (Guo et al., ICML 2017): one scalar ``T`` that makes a network's class probabilities honest.

A network trained with Dice + cross-entropy is overconfident (its softmax says 0.99 where it is right 90 % of the
time). Dividing the log-probabilities by ``T`` and renormalising, ``softmax(log p / T)``, keeps every argmax (the
label maps do not change) and, with ``T`` fitted by minimising the negative log-likelihood (NLL) of held-out
voxels, makes the probabilities and the uncertainty maps match the observed error rates. ``T`` is fitted by LBFGS
on ``log T`` (so it stays positive). :func:`calibration_metrics` gives NLL, the expected calibration error (ECE,
15 equal-width bins of the top-class confidence) and the multi-class Brier score.
"""

from __future__ import annotations

import math

import torch

from medseg_attn.errors import UserError

__all__ = ["apply_temperature", "calibration_metrics", "fit_temperature", "ECE_BINS"]

ECE_BINS = 15
EPS = 1e-12


def apply_temperature(probabilities: torch.Tensor, temperature: float, dim: int = 0) -> torch.Tensor:
    """``softmax(log p / T)`` along ``dim``, computed in place (no copy of a whole volume's probabilities)."""
    if temperature == 1.0:
        return probabilities
    p = probabilities
    p.clamp_(min=EPS).log_().div_(temperature)
    p.sub_(p.amax(dim, keepdim=True)).exp_()
    return p.div_(p.sum(dim, keepdim=True))


def fit_temperature(probabilities: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> float:
    """The ``T`` minimising the NLL of ``targets`` under ``softmax(log p / T)``.

    Args:
        probabilities: (N, K) class probabilities of N samples (voxels).
        targets: (N,) true class indices.

    Raises:
        ValueError: no samples, or shapes that do not match.
    """
    if probabilities.ndim != 2 or targets.shape != probabilities.shape[:1] or not len(targets):
        raise UserError(f"fit_temperature: expected (N, K) probabilities and (N,) targets with N > 0, got "
                         f"{tuple(probabilities.shape)} and {tuple(targets.shape)}")
    logits = probabilities.double().clamp_min(EPS).log()
    targets = targets.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    return min(max(temperature, 0.05), 20.0) if math.isfinite(temperature) else 1.0


def calibration_metrics(probabilities: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS
                        ) -> dict[str, float]:
    """NLL, ECE (top-class confidence in ``bins`` equal-width bins) and Brier score (sum over classes, mean over
    samples) of (N, K) probabilities against (N,) class indices."""
    p = probabilities.double().clamp_min(0)
    p = p / p.sum(1, keepdim=True).clamp_min(EPS)
    targets = targets.long()
    nll = float(-p.gather(1, targets[:, None]).clamp_min(EPS).log().mean())
    confidence, predicted = p.max(1)
    correct = (predicted == targets).double()
    which = (confidence * bins).long().clamp(max=bins - 1)
    ece = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            ece += float(inside.double().mean()) * abs(float(confidence[inside].mean() - correct[inside].mean()))
    one_hot = torch.nn.functional.one_hot(targets, p.shape[1]).double()
    brier = float(((p - one_hot) ** 2).sum(1).mean())
    return {"nll": round(nll, 6), "ece": round(ece, 6), "brier": round(brier, 6)}
