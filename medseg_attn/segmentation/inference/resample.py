"""Predictions back onto each input's own grid: class probabilities (and explanation maps) resampled slab by slab,
the argmax taken on the target grid (nnU-Net's order: resampling a label map instead costs thin structures)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from medseg_attn.io.volumes import spatial_affine

__all__ = ["Resampled", "class_labels", "normalise_maximum", "resample_prediction", "resample_to_grid",
           "spatial_affine"]


def _resampled_slabs(
    values: torch.Tensor, source_affine: np.ndarray, target_affine: np.ndarray, target_shape: Sequence[int],
    max_points: int,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Bilinear samples of ``values`` (C, *S_src) at the target grid's voxel centres, slab by slab along the
    target's last axis: yields (start, stop, (C, P) samples); zero outside the source grid (within one voxel of
    its edge, the edge's values)."""
    dims = len(target_shape)
    channels = values.shape[0]
    src = values.float()[None]  # (1, C, *S_src)
    # voxel index of the target -> voxel index of the source
    mapping = np.linalg.inv(source_affine) @ target_affine
    mapping_t = torch.as_tensor(mapping, dtype=torch.float64)
    src_size = torch.tensor(values.shape[1:], dtype=torch.float64)
    plane = int(np.prod(target_shape[:-1]))
    slab = max(1, min(target_shape[-1], max_points // max(1, plane)))
    axes = [torch.arange(s, dtype=torch.float64) for s in target_shape[:-1]]
    for start in range(0, target_shape[-1], slab):
        stop = min(target_shape[-1], start + slab)
        grid = torch.meshgrid(*axes, torch.arange(start, stop, dtype=torch.float64), indexing="ij")
        points = torch.stack([g.reshape(-1) for g in grid] + [torch.ones(grid[0].numel(), dtype=torch.float64)])
        source = (mapping_t @ points)[:dims]  # (D, P) source voxel coordinates
        # less than one voxel beyond the source grid's edge (a resampled grid need not reach the input's last
        # voxel centre: 20 slices of 2 mm span 38 mm, 10 network slices of 4 mm only 36 mm): take the edge value
        size = src_size[:, None]
        source = torch.where((source > -1) & (source < size), torch.minimum(source.clamp(min=0), size - 1), source)
        # grid_sample wants (x=last axis, ..., first axis) normalised to [-1, 1] with align_corners=True
        normalised = 2.0 * source / torch.clamp(src_size[:, None] - 1, min=1) - 1.0
        normalised = torch.where(src_size[:, None] > 1, normalised, torch.zeros_like(normalised))
        sample_grid = normalised.flip(0).T.reshape(1, *([1] * (dims - 1)), -1, dims).to(src.device, src.dtype)
        sampled = F.grid_sample(src, sample_grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        yield start, stop, sampled.reshape(channels, -1)  # (C, P)


class Resampled(NamedTuple):
    """What :func:`resample_prediction` returns, on the target grid."""

    labels: np.ndarray  # (*S) uint8/int16 class indices
    probabilities: np.ndarray | None  # (C, *S) float32
    uncertainty: np.ndarray | None  # (*S) float32 in [0, 1]
    maps: dict[str, np.ndarray]  # name -> (c, *S) float32


def resample_prediction(
    values: torch.Tensor,
    source_affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: Sequence[int],
    keep_values: bool = False,
    uncertainty: bool = False,
    maps: dict[str, torch.Tensor] | None = None,
    fill_background: bool = True,
    max_points: int = 1 << 22,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Resampled:
    """Resample class probabilities (C, *S_src) onto another voxel grid; argmax and entropy are taken there.

    Both affines map voxel indices to the same world space. The target grid is processed in slabs along its
    last axis (at most ``max_points`` voxels at a time), so memory grows with one slab, not the volume. Other
    maps on the source grid are resampled in the same pass (one set of sample positions for all).

    Args:
        values: (C, *S_src) probabilities on the source grid (any device).
        source_affine, target_affine: (D+1, D+1) voxel-to-world matrices.
        target_shape: spatial shape of the target grid.
        keep_values: also return the resampled probabilities (C, *target_shape) as float32.
        uncertainty: also return the predictive entropy of the resampled probabilities, divided by log(C) so it
            lies in [0, 1] (0: one class certain; 1: all classes equally likely), float32 of target_shape.
        maps: name -> (c, *S_src) maps to resample too (linearly; 0 outside the source grid).
        fill_background: outside the source grid, probability 1 for class 0 (within one voxel of its edge, the
            edge's values).
        decode: (C, P) probabilities -> (P,) labels (default: the argmax, :func:`class_labels`); a region model
            paints its regions (:meth:`~medseg_attn.segmentation.measures.regions.Regions.paint`), and its entropy
            is then the mean binary entropy of the regions' sigmoids, over log 2.
    """
    channels = values.shape[0]
    maps = maps or {}
    sizes = [m.shape[0] for m in maps.values()]
    label_dtype = np.uint8 if channels <= 255 else np.int16
    labels = np.zeros(tuple(target_shape), dtype=label_dtype)
    probabilities = np.zeros((channels, *target_shape), dtype=np.float32) if keep_values else None
    entropy = np.zeros(tuple(target_shape), dtype=np.float32) if uncertainty else None
    resampled = {name: np.zeros((size, *target_shape), dtype=np.float32)
                 for name, size in zip(maps, sizes, strict=True)}
    stacked = torch.cat([values.float(), *[m.to(values.device, torch.float32) for m in maps.values()]]) \
        if maps else values  # (C + sum(c), *S_src)
    if maps or uncertainty:  # half-size slabs: their coordinates, extra channels and entropy fit the same memory
        max_points = max(1, max_points // 2)
    for start, stop, sampled in _resampled_slabs(stacked, source_affine, target_affine, target_shape, max_points):
        shape = (*target_shape[:-1], stop - start)
        extra = sampled[channels:].cpu().numpy()
        sampled = sampled[:channels]  # (C, P)
        if fill_background:
            sampled[0] += (1.0 - sampled.sum(0)).clamp(min=0)
        labels[..., start:stop] = (decode or class_labels)(sampled).reshape(shape).cpu().numpy().astype(label_dtype)
        if probabilities is not None:
            probabilities[..., start:stop] = sampled.reshape(channels, *shape).cpu().numpy()
        if entropy is not None:
            if decode is None:
                h = torch.special.entr(sampled.clamp(min=0)).sum(0) / math.log(max(channels, 2))  # (P,)
            else:  # independent sigmoids: each region's binary entropy, averaged
                p = sampled.clamp(0, 1)
                h = (torch.special.entr(p) + torch.special.entr(1 - p)).mean(0) / math.log(2)
            entropy[..., start:stop] = h.clamp(0, 1).reshape(shape).cpu().numpy()
        first = 0
        for out, size in zip(resampled.values(), sizes, strict=True):
            out[..., start:stop] = extra[first:first + size].reshape(size, *shape)
            first += size
    return Resampled(labels, probabilities, entropy, resampled)


def resample_to_grid(
    values: torch.Tensor,
    source_affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: Sequence[int],
    keep_values: bool = False,
    fill_background: bool = True,
    max_points: int = 1 << 22,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resample class probabilities (C, *S_src) onto another voxel grid and take the argmax there.

    See :func:`resample_prediction` (this is it without the entropy).

    Returns:
        (labels as uint8/int16 array of target_shape, probabilities or None)
    """
    result = resample_prediction(values, source_affine, target_affine, target_shape, keep_values,
                                 fill_background=fill_background, max_points=max_points)
    return result.labels, result.probabilities


def class_labels(probabilities: torch.Tensor, chunk: int = 1 << 22) -> torch.Tensor:
    """The most probable class per voxel of (C, *S) probabilities or logits, as uint8 (int32 beyond 255 classes);
    ties go to the lower class, as argmax.

    ``max(0).indices`` rather than ``argmax(0)``: on a CPU, PyTorch 2.13's argmax over the leading axis of a
    contiguous tensor takes a slow path (same indices; timing: docs/benchmarks.md, "Timings behind design choices").
    Taken ``chunk`` voxels at a time, so the only full-size result is the small label map."""
    channels, *spatial = probabilities.shape
    flat = probabilities.reshape(channels, -1)
    labels = torch.empty(flat.shape[1], dtype=torch.uint8 if channels <= 256 else torch.int32,
                         device=probabilities.device)
    for start in range(0, flat.shape[1], chunk):
        labels[start:start + chunk] = flat[:, start:start + chunk].max(0).indices
    return labels.reshape(spatial)


def normalise_maximum(values: np.ndarray) -> np.ndarray:
    """Scale each map of (C, *S) so its maximum is 1 (in place; all-zero maps stay 0); values in [0, 1]."""
    for channel in values:
        top = float(channel.max())
        if top > 0:
            channel /= top
    return np.clip(values, 0.0, 1.0, out=values)
