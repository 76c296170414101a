"""Sliding-window inference that accumulates class probabilities in one buffer.

Every window batch is run through the network (and its flips), turned into probabilities, weighted by the
Gaussian importance map and added into a single accumulator, so peak memory is one (classes x volume) buffer plus
a one-channel weight map, growing linearly with the volume. MONAI's ``sliding_window_inference`` blends the
network's output in much the same way (one output buffer and a count map); measured with the *same* network, the
two pipelines run at about the same speed and memory (see docs/benchmarks.md): what this module adds is blending
probabilities rather than logits, TTA flips and ensembles inside the window loop, and the attention maps.

Ensembles (several networks) are averaged the same way as flips: every (network, flip) pair's probabilities are
summed into the window's average before blending. With ``with_maps``, each network also returns per-level maps
(the attention each voxel receives, see :meth:`AttentionSkipUNet.forward_with_attention`); they are flipped back,
averaged and blended with the same Gaussian weights into one small accumulator per level.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from monai.data.utils import compute_importance_map

__all__ = ["window_starts", "sliding_window_probabilities", "mean_of_blends"]


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets of windows covering ``size`` voxels with the given overlap; the last one ends at the edge."""
    if size <= window:
        return [0]
    step = max(1, int(window * (1.0 - overlap)))
    starts = list(range(0, size - window + 1, step))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


@torch.no_grad()
def sliding_window_probabilities(
    forward: Callable[[torch.Tensor], Any] | Sequence[Callable[[torch.Tensor], Any]],
    image: torch.Tensor,
    window: Sequence[int],
    overlap: float | Sequence[float] = 0.5,
    batch_size: int = 2,
    blend: str = "gaussian",
    flips: Sequence[tuple[int, ...]] = ((),),
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    with_maps: bool = False,
    pad_value: float = 0.0,
    activation: str = "softmax",
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Blend softmax (or, for region models, sigmoid) probabilities of overlapping windows over a whole image.

    Args:
        forward: network, (B, C, *window) -> logits (B, K, *window); or a sequence of them (an ensemble,
            averaged). With ``with_maps`` each returns (logits, {name: (B, c, *window) map}).
        image: (C, *S) on any device (stays there; windows move to ``device``).
        window: window size per spatial axis; images smaller than it are padded with ``pad_value`` on both sides.
        overlap: fraction of a window shared with its neighbour, in [0, 1); one per spatial axis or one for all.
        batch_size: windows per forward call.
        blend: 'gaussian' (MONAI's importance map, sigma = window / 8) or 'constant'.
        flips: spatial-axis tuples to flip for test-time augmentation (axes counted in (B, C, *S), i.e. from 2);
            ``((),)`` = no TTA.
        device: where the network runs (default: the image's device).
        dtype: accumulator type; float16 halves the buffer for many-class models.
        with_maps: also blend the maps the forwards return.
        pad_value: what padding holds: the preprocessing's background value, as training pads its patches.
        activation: 'softmax' over the classes, or 'sigmoid' per output (region models).

    Returns:
        (K, *S) class probabilities (dtype ``dtype``) on the image's device; with ``with_maps`` also
        {name: (c, *S) float32 map}.
    """
    forwards = list(forward) if isinstance(forward, Sequence) else [forward]
    device = torch.device(device) if device is not None else image.device
    spatial = tuple(image.shape[1:])
    window = tuple(int(w) for w in window)
    padded = tuple(max(s, w) for s, w in zip(spatial, window, strict=True))
    before = [(p - s) // 2 for s, p in zip(spatial, padded, strict=True)]
    if padded != spatial:
        pad = []
        for s, p, b in zip(reversed(spatial), reversed(padded), reversed(before), strict=True):
            pad += [b, p - s - b]
        image = torch.nn.functional.pad(image, pad, value=pad_value)
    importance = compute_importance_map(window, mode=blend, sigma_scale=0.125, device=device).to(torch.float32)
    overlaps = [float(overlap)] * len(window) if isinstance(overlap, (int, float)) else [float(o) for o in overlap]
    starts = [window_starts(s, w, o) for s, w, o in zip(padded, window, overlaps, strict=True)]
    corners = list(itertools.product(*starts))
    accumulator: torch.Tensor | None = None
    map_accumulators: dict[str, torch.Tensor] = {}
    weights = torch.zeros(padded, dtype=torch.float32, device=image.device)
    runs = len(forwards) * len(flips)
    scaled = importance / runs  # each (network, flip) run's share of a window's Gaussian weight
    importance_here = importance.to(image.device)
    for first in range(0, len(corners), batch_size):
        batch_corners = corners[first:first + batch_size]
        slices = [tuple(slice(c, c + w) for c, w in zip(corner, window, strict=True)) for corner in batch_corners]
        batch = torch.stack([image[(slice(None),) + s] for s in slices]).to(device)  # (B, C, *window)
        probabilities = None
        maps: dict[str, torch.Tensor] = {}
        for network in forwards:
            for flip in flips:
                x = batch.flip(flip) if flip else batch
                out = network(x)
                logits, window_maps = out if with_maps else (out, {})
                p = logits.float().softmax(1) if activation == "softmax" else logits.float().sigmoid()  # (B, K, *w)
                p = p.flip(flip) if flip else p
                probabilities = p if probabilities is None else probabilities + p
                for name, m in window_maps.items():  # (B, c, *window)
                    m = m.float().flip(flip) if flip else m.float()
                    maps[name] = maps[name] + m if name in maps else m
        probabilities.mul_(scaled)  # in place: a fresh tensor from the softmax / sigmoid (or the sum of them)
        if accumulator is None:
            accumulator = torch.zeros((probabilities.shape[1], *padded), dtype=dtype, device=image.device)
        for name, m in maps.items():
            if name not in map_accumulators:
                map_accumulators[name] = torch.zeros((m.shape[1], *padded), dtype=torch.float32, device=image.device)
            for one, s in zip((m * scaled).to(image.device), slices, strict=True):
                map_accumulators[name][(slice(None),) + s] += one
        for p, s in zip(probabilities.to(image.device), slices, strict=True):
            accumulator[(slice(None),) + s] += p.to(dtype)
            weights[s] += importance_here
    assert accumulator is not None
    crop = (slice(None),) + tuple(slice(b, b + s) for b, s in zip(before, spatial, strict=True))
    for buffer in [accumulator, *map_accumulators.values()]:
        for channel in buffer:  # in place, one channel at a time: no second full-size buffer
            channel.div_(weights.to(channel.dtype))
    if padded != spatial:
        accumulator = accumulator[crop]
        map_accumulators = {name: m[crop] for name, m in map_accumulators.items()}
    return (accumulator, map_accumulators) if with_maps else accumulator


def mean_of_blends(parts: Iterable[Any], with_maps: bool = False) -> Any:
    """The mean of several :func:`sliding_window_probabilities` results (probabilities, and maps with
    ``with_maps``), summed in place as they come (one extra volume in memory, whatever their number): an ensemble
    whose members are blended apart, e.g. each calibrated with its own temperature."""
    total, count = None, 0
    for part in parts:
        count += 1
        if total is None:
            total = part
        elif with_maps:
            total[0].add_(part[0])
            for name, values in part[1].items():
                total[1][name].add_(values)
        else:
            total.add_(part)
    if with_maps:
        total[0].div_(count)
        for values in total[1].values():
            values.div_(count)
        return total
    return total.div_(count)
