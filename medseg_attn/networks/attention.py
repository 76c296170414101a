"""Multi-head attention and the window helpers used by the attention skip connections.

The block follows the textbook definition: project the input with learned Q/K/V maps *first*, split the
projections into heads, compute ``softmax(Q K^T / sqrt(d)) V`` per head with
:func:`torch.nn.functional.scaled_dot_product_attention`, concatenate the heads and project out.

Fine levels of a 3D network cannot attend globally (one fp32 score matrix for a 48^3 map is ~49 GB), so the
helpers here cut a channel-first feature map into non-overlapping windows of tokens and stitch them back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg_attn.errors import UserError

__all__ = [
    "MultiHeadAttention",
    "reference_attention",
    "window_partition",
    "window_merge",
    "padding_key_mask",
    "pad_to_multiple",
    "block_mean",
    "add_block_update",
]


class MultiHeadAttention(nn.Module):
    """Multi-head (cross-)attention on token sequences.

    Args:
        dim: channels of the query tokens and of the output.
        heads: number of heads; ``dim`` must be divisible by it.
        kv_dim: channels of the key/value tokens (default ``dim``).
        qkv_bias: learn a bias in the Q/K/V projections.
        attn_dropout: dropout on the attention weights, applied only in training mode.
        proj_dropout: dropout after the output projection, applied only in training mode.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 1,
        kv_dim: int | None = None,
        qkv_bias: bool = True,
        attn_dropout: float = 0.0,
        proj_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % heads != 0:
            raise UserError(f"attention dim {dim} is not divisible by heads={heads}")
        self.dim = dim
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        kv_dim = dim if kv_dim is None else kv_dim
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(kv_dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_dropout = attn_dropout
        self.proj_dropout = nn.Dropout(proj_dropout)

    def forward(
        self,
        query: torch.Tensor,
        key_value: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        return_weights: bool = False,
        return_received: bool = False,
        query_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Attend from ``query`` tokens to ``key_value`` tokens (self-attention when it is None).

        Args:
            query: (B, N, dim) query tokens.
            key_value: (B, M, kv_dim) key/value tokens; ``query`` itself when None.
            mask: boolean (B or 1, 1 or heads, N or 1, M), True where a key may be attended, or an additive
                float bias of that shape.
            return_weights: also return the attention weights (B, heads, N, M); uses the explicit
                softmax path, so only ask for it when you need the weights.
            return_received: also return the attention each key *receives*, (B, heads, M) float32: the weights
                summed over the queries, reduced chunk by chunk of queries (see :meth:`attend_received`), so the
                full (N, M) matrix is never held. For explanation maps; slower than the fused kernel.
            query_mask: boolean (B, N), True for queries that count in ``return_received`` (padding does not).

        Returns:
            (B, N, dim) output tokens, and the weights or received attention when asked for.
        """
        key_value = query if key_value is None else key_value
        batch, n_query, _ = query.shape
        n_key = key_value.shape[1]
        q = self.q(query).view(batch, n_query, self.heads, self.head_dim).transpose(1, 2)  # (B, h, N, d)
        kv = self.kv(key_value).view(batch, n_key, 2, self.heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, M, d)
        dropout_p = self.attn_dropout if self.training else 0.0
        if return_received:
            out, received = self.attend_received(q, k, v, mask, query_mask)  # (B, h, N, d), (B, h, M)
            out = out.transpose(1, 2).reshape(batch, n_query, self.dim)  # (B, N, dim)
            return self.proj_dropout(self.proj(out)), received
        if return_weights:
            scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, h, N, M)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
            weights = scores.softmax(dim=-1)  # (B, h, N, M)
            out = F.dropout(weights, dropout_p) @ v  # (B, h, N, d)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)  # (B, h, N, d)
        out = out.transpose(1, 2).reshape(batch, n_query, self.dim)  # (B, N, dim)
        out = self.proj_dropout(self.proj(out))
        return (out, weights) if return_weights else out

    def attend_received(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
        max_elements: int = 1 << 24,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention output and the attention each key receives, by explicit softmax over chunks of queries.

        Only one chunk's weights (at most ``max_elements`` values) exist at a time, so memory stays bounded
        even for a global level of thousands of tokens. Eval-time only (no dropout).

        Args:
            q: (B, h, N, d); k, v: (B, h, M, d).
            mask: as in :meth:`forward` (keys that may be attended).
            query_mask: boolean (B, N), True for queries whose weights are summed.

        Returns:
            (B, h, N, d) output and (B, h, M) float32 received attention (sum over queries of the weights).
        """
        batch, heads, n_query, _ = q.shape
        n_key = k.shape[2]
        chunk = max(1, max_elements // max(1, batch * heads * n_key))
        received = torch.zeros(batch, heads, n_key, dtype=torch.float32, device=q.device)
        k_t = k.float().transpose(-2, -1)  # (B, h, d, M)
        outputs = []
        for start in range(0, n_query, chunk):
            stop = min(n_query, start + chunk)
            scores = (q[:, :, start:stop].float() * self.scale) @ k_t  # (B, h, n, M)
            if mask is not None:
                part = mask[:, :, start:stop] if mask.shape[2] == n_query and n_query > 1 else mask
                scores = scores.masked_fill(~part, float("-inf")) if part.dtype == torch.bool else scores + part
            weights = scores.softmax(dim=-1)  # (B, h, n, M)
            outputs.append(weights.to(v.dtype) @ v)  # (B, h, n, d)
            if query_mask is not None:
                weights = weights * query_mask[:, None, start:stop, None]
            received += weights.sum(dim=2)  # (B, h, M)
        return torch.cat(outputs, dim=2), received


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Plain ``softmax(Q K^T / sqrt(d)) V`` written out with einsum: the test oracle.

    Args:
        q: (B, h, N, d); k, v: (B, h, M, d); mask: boolean, broadcastable to (B, h, N, M), True = keep.
    """
    scores = torch.einsum("bhnd,bhmd->bhnm", q, k) / math.sqrt(q.shape[-1])  # (B, h, N, M)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhnm,bhmd->bhnd", scores.softmax(-1), v)  # (B, h, N, d)


def pad_to_multiple(x: torch.Tensor, window: Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Zero-pad the spatial axes of a channel-first map (B, C, *S) at the far end to multiples of ``window``.

    Returns the padded map and the per-axis padding that was added.
    """
    spatial = x.shape[2:]
    pads = tuple((-size) % w for size, w in zip(spatial, window, strict=True))
    if any(pads):
        flat = []
        for p in reversed(pads):  # F.pad wants the last axis first
            flat += [0, p]
        x = F.pad(x, flat)
    return x, pads


def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """Cut a channel-first map into non-overlapping windows of tokens.

    Works on any memory layout with a single copy: the map is viewed channels-last first (free for
    ``channels_last`` tensors), the spatial axes are split into (grid, window) views, and only the final reshape
    copies.

    Args:
        x: (B, C, *S) with every S[i] divisible by window[i] (2 or 3 spatial axes).
        window: window size per spatial axis.

    Returns:
        (B * num_windows, prod(window), C) tokens, windows in row-major order of their grid position.
    """
    batch, channels, *spatial = x.shape
    dims = len(spatial)
    grid = [s // w for s, w in zip(spatial, window, strict=True)]
    x = x.movedim(1, dims + 1)  # (B, *S, C), a view (positive axes: exportable to ONNX)
    interleaved = [v for pair in zip(grid, window, strict=True) for v in pair]  # g0, w0, g1, w1, ..
    x = x.reshape(batch, *interleaved, channels)  # (B, g0, w0, g1, w1, .., C)
    order = [0] + [1 + 2 * i for i in range(dims)] + [2 + 2 * i for i in range(dims)] + [1 + 2 * dims]
    x = x.permute(*order)  # (B, g0, g1[, g2], w0, w1[, w2], C)
    return x.reshape(-1, math.prod(window), channels)


def window_merge(tokens: torch.Tensor, window: Sequence[int], spatial: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`.

    Args:
        tokens: (B * num_windows, prod(window), C).
        window: window size per spatial axis.
        spatial: the spatial shape S of the map that was partitioned.

    Returns:
        (B, C, *S), laid out channels-last in memory (one copy), like the rest of a channels-last network.
    """
    dims = len(spatial)
    channels = tokens.shape[-1]
    grid = [s // w for s, w in zip(spatial, window, strict=True)]
    x = tokens.reshape(-1, *grid, *window, channels)  # (B, g0, g1[, g2], w0, w1[, w2], C)
    order = [0]
    for i in range(dims):
        order += [1 + i, 1 + dims + i]
    x = x.permute(*order, 1 + 2 * dims)  # (B, g0, w0, g1, w1[, g2, w2], C)
    x = x.reshape(x.shape[0], *spatial, channels)  # (B, *S, C)
    return x.movedim(dims + 1, 1)  # (B, C, *S), a view


def padding_key_mask(
    spatial: Sequence[int], pads: Sequence[int], window: Sequence[int], batch: int, device: torch.device | None = None
) -> torch.Tensor | None:
    """Boolean key mask for windows of a map that :func:`pad_to_multiple` padded.

    Args:
        spatial: padded spatial shape S.
        pads: padding added at the far end of each axis.
        window: window size per spatial axis.
        batch: batch size B of the map.

    Returns:
        None when nothing was padded, else (B * num_windows, 1, 1, prod(window)), True on real voxels, for the
        ``mask`` argument of :class:`MultiHeadAttention`.
    """
    if not any(pads):
        return None
    valid = torch.ones(1, 1, *spatial, dtype=torch.bool, device=device)
    for axis, p in enumerate(pads):
        if p:
            valid.narrow(2 + axis, spatial[axis] - p, p).fill_(False)
    tokens = window_partition(valid.to(torch.uint8), window).bool()  # (num_windows, prod(window), 1)
    mask = tokens[:, :, 0][:, None, None, :]  # (num_windows, 1, 1, M)
    return mask.repeat(batch, 1, 1, 1)


def _avg_pool(x: torch.Tensor, pool: int) -> torch.Tensor:
    average = {4: F.avg_pool2d, 5: F.avg_pool3d}[x.dim()]
    if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16):  # no reduced-precision CPU kernel
        return average(x.float(), pool, ceil_mode=True).to(x.dtype)
    return average(x, pool, ceil_mode=True)


def _repeat_blocks(tokens: torch.Tensor, pool: int) -> torch.Tensor:
    """(B, C, *T) -> (B, C, *T * pool): every token repeated over its pool^dims block.

    One axis at a time, last first: each step is a low-rank copy, faster on CPU than one copy out of a single
    (B, C, T0, pool, T1, pool, ..) broadcast view (timing: docs/benchmarks.md, "Timings behind design choices").
    """
    x = tokens
    for axis in reversed(range(2, tokens.dim())):
        shape = list(x.shape)
        x = x.unsqueeze(axis + 1).expand(*shape[: axis + 1], pool, *shape[axis + 1:])  # (.., T_axis, pool, ..)
        x = x.reshape(*shape[:axis], shape[axis] * pool, *shape[axis + 1:])
    return x


class _BlockMean(torch.autograd.Function):
    """Mean over non-overlapping pool^dims blocks; backward spreads the gradient by block repetition (PyTorch's
    avg_pool backward zero-fills and scatters, about 4x slower on CPU)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, pool: int) -> torch.Tensor:  # type: ignore[override]
        ctx.pool = pool
        return _avg_pool(x, pool)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return _repeat_blocks(grad / ctx.pool ** (grad.dim() - 2), ctx.pool), None


class _AddBlockUpdate(torch.autograd.Function):
    """``skip + update`` repeated over pool^dims blocks; backward reduces the update's gradient with a block sum
    by avg_pool (faster on CPU than autograd's strided sum over the expanded axes; timing: docs/benchmarks.md)."""

    @staticmethod
    def forward(ctx, skip: torch.Tensor, update: torch.Tensor, pool: int) -> torch.Tensor:  # type: ignore[override]
        ctx.pool = pool
        return skip + _repeat_blocks(update, pool)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:  # type: ignore[override]
        return grad, _avg_pool(grad, ctx.pool) * ctx.pool ** (grad.dim() - 2), None


def block_mean(x: torch.Tensor, pool: int) -> torch.Tensor:
    """Mean of each pool^dims block of a channel-first map (B, C, *S) -> (B, C, *ceil(S / pool)).

    The same values as ``avg_pool(x, pool, ceil_mode=True)``; when ``x`` needs a gradient and its sides are
    multiples of ``pool``, the backward pass repeats the gradient over the blocks instead of PyTorch's scatter.
    """
    if torch.is_grad_enabled() and x.requires_grad and all(s % pool == 0 for s in x.shape[2:]):
        return _BlockMean.apply(x, pool)
    return _avg_pool(x, pool)


def add_block_update(skip: torch.Tensor, update: torch.Tensor, pool: int) -> torch.Tensor:
    """``skip`` (B, C, *S) plus each token of ``update`` (B, C, *S / pool) over its pool^dims block of voxels.

    ``S`` must be a multiple of ``pool``. Under autograd the update's gradient is a block sum by avg_pool.
    """
    if torch.is_grad_enabled() and (skip.requires_grad or update.requires_grad):
        return _AddBlockUpdate.apply(skip, update, pool)
    return skip + _repeat_blocks(update, pool)
