"""The losses MONAI lacks: DiceCE with an ignore label (sparse annotations: voxels labelled ``ignore`` add nothing to
the loss or its gradient; elsewhere it is MONAI's DiceCE), and Dice + BCE over sigmoid regions (MONAI's DiceCELoss
takes a softmax cross-entropy for several channels, not one binary cross-entropy per region)."""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch import nn
from torch.nn import functional

from medseg_attn.segmentation.measures.regions import Regions

__all__ = ["IgnoreDiceCELoss", "RegionDiceBCELoss"]


class IgnoreDiceCELoss(nn.Module):
    """``DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)`` that leaves out the
    voxels whose label is ``ignore``: their probabilities and one-hot targets are zeroed for the Dice term and
    they are skipped by the cross-entropy (its mean runs over the annotated voxels)."""

    def __init__(self, ignore: int, num_classes: int) -> None:
        super().__init__()
        self.ignore = int(ignore)
        self.num_classes = int(num_classes)
        self.dice = DiceLoss(include_background=False, batch=True)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """logits (B, K, *S), label (B, 1, *S) with values 0..K-1 and ``ignore``."""
        label = label.long()
        annotated = label != self.ignore  # (B, 1, *S)
        target = torch.where(annotated, label, torch.zeros_like(label))
        one_hot = functional.one_hot(target[:, 0], self.num_classes).movedim(-1, 1).to(logits.dtype)
        weight = annotated.to(logits.dtype)
        dice = self.dice(torch.softmax(logits, 1) * weight, one_hot * weight)
        if not bool(annotated.any()):
            return dice + 0.0 * logits.sum()
        ce_target = torch.where(annotated, label, torch.full_like(label, -100))[:, 0]
        return dice + functional.cross_entropy(logits, ce_target, ignore_index=-100)


class RegionDiceBCELoss(nn.Module):
    """nnU-Net's loss for region-based labels: one sigmoid per region, soft Dice (batch-wise, every region) plus
    binary cross-entropy, on the region masks of an integer label map (:meth:`Regions.targets`)."""

    def __init__(self, regions: Regions) -> None:
        super().__init__()
        self.regions = regions
        self.dice = DiceLoss(sigmoid=True, batch=True)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """logits (B, R, *S), label (B, 1, *S) integer label values."""
        target = self.regions.targets(label).to(logits.dtype)  # (B, R, *S)
        return self.dice(logits, target) + functional.binary_cross_entropy_with_logits(logits, target)
