"""Member agreement: how much a model's own test-time variations agree on one case (a failure signal).

Each *member* is one (network, flip) pair predicting alone: every network of the ensemble, without a flip and
with each spatial axis mirrored (the TTA flips one at a time; 4 members per network in 3D, 3 in 2D). The members'
label maps (on the network grid) are compared two by two; the agreement is the mean over pairs of the mean Dice
over the foreground classes either member predicted (a pair where both are empty counts 1). Pairwise Dice
between ensemble or TTA members is among the strongest failure detectors for segmentation (Zenk et al., MedIA
2025); ``docs/trust.md`` gives what it found here. It costs one forward pass per member.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medseg_attn.errors import UserError
from medseg_attn.segmentation.measures.overlap import mask_dice

__all__ = ["member_labels", "pairwise_dice", "member_agreement"]


def member_labels(predictor: Any, image: torch.Tensor) -> list[np.ndarray]:
    """Each (network, flip) member's label map (*S) for a preprocessed image (C, *S) on the network grid."""
    return [predictor.labels_of(probs).numpy().astype(np.uint8) for probs in predictor.member_probabilities(image)]


def pairwise_dice(labels: Sequence[np.ndarray], classes: Sequence[int]) -> float:
    """Mean over member pairs of the mean Dice over ``classes`` present in either member (both empty: 1)."""
    if len(labels) < 2:
        raise UserError(f"pairwise Dice needs at least 2 members, got {len(labels)}")
    pairs = []
    for a, b in itertools.combinations(labels, 2):
        scores = [mask_dice(a == k, b == k) for k in classes if (a == k).any() or (b == k).any()]
        pairs.append(float(np.mean(scores)) if scores else 1.0)
    return float(np.mean(pairs))


def member_agreement(predictor: Any, image: np.ndarray | torch.Tensor, affine: np.ndarray | None = None) -> float:
    """The agreement (0..1, 1 = every member gives the same labels) of one in-memory case (*S) or (C, *S)."""
    loaded = predictor.load_array(image, affine)
    network_image = predictor.preprocess(loaded)  # (C, *S_network)
    classes = [k for k in predictor.labels if int(k) > 0]
    return pairwise_dice(member_labels(predictor, torch.as_tensor(network_image)), classes)
