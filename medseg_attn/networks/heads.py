"""Classification on the U-Net encoder: the bottleneck feature map -> tokens -> multi-head attention -> MLP -> logits.

:class:`ClassificationHead` reads the encoder's coarsest feature map (B, C, *S). With attention on, every voxel
of that map becomes a token (a depthwise convolution first adds where it is, as in conditional position
encodings), and the tokens are pooled by attention:

* ``pooling="class_token"`` (ViT): a learned class token is prepended and ``layers`` pre-norm transformer blocks
  (self-attention with :class:`~medseg_attn.networks.attention.MultiHeadAttention`, then an MLP) run over
  [class; tokens]; the class token's output is the image descriptor;
* ``pooling="attention"`` (attention pooling, as in CLIP's ResNet): the map's average is the query, prepended
  to the tokens, and one transformer block updates it alone: the global average pooled descriptor, refined by
  what it finds when it attends over the map.

With attention off, the descriptor is the global average of the map: the matched baseline (same encoder, same
MLP). The descriptor goes through LayerNorm -> Linear -> GELU -> Dropout -> Linear to the class logits.

:class:`AttentionClassifier` = :class:`~medseg_attn.networks.unet.AttentionSkipUNet` encoder + head, 2D or 3D;
with ``segmentation_classes`` it keeps the U-Net decoder too and returns (class logits, segmentation logits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg_attn.errors import UserError
from medseg_attn.networks.attention import MultiHeadAttention
from medseg_attn.networks.unet import AttentionSkipUNet

__all__ = ["AttentionClassifier", "ClassificationHead", "TransformerBlock"]


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + Attention(LN(x)), then x + MLP(LN(x)).

    Args:
        dim: token channels.
        heads: attention heads.
        mlp_ratio: hidden width of the MLP as a multiple of ``dim``.
        attention_dropout: dropout on attention weights (training only).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, attention_dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = MultiHeadAttention(dim, heads, attn_dropout=attention_dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, queries: int | None = None, return_weights: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Args: x: (B, N, dim); queries: only the first ``queries`` tokens are updated and returned (all others
        still serve as keys/values). Returns (B, queries or N, dim) (and weights (B, h, queries or N, N))."""
        h = self.norm1(x)  # (B, N, C)
        query = h if queries is None else h[:, :queries]  # (B, Q, C)
        result = self.attention(query, h, return_weights=return_weights)
        attended, weights = result if return_weights else (result, None)
        out = (x if queries is None else x[:, :queries]) + attended  # (B, Q, C)
        out = out + self.mlp(self.norm2(out))
        return (out, weights) if return_weights else out


class ClassificationHead(nn.Module):
    """Class logits from an encoder's bottleneck feature map.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels C of the feature map.
        num_classes: number of classes K.
        attention: attention pooling; False = global average pooling (the matched baseline).
        pooling: 'class_token' (transformer blocks over [learned class token; tokens]) or 'attention' (the
            tokens' mean is the query of one block over [mean; tokens]).
        layers: transformer blocks of the 'class_token' head.
        head_dim: channels per attention head (heads = C // head_dim, at least 1).
        hidden: hidden width of the output MLP (default 2 * C).
        dropout: dropout before the last linear layer (training only).
        attention_dropout: dropout on attention weights (training only).
        position: add a depthwise-convolution position encoding to the map before it becomes tokens.
        max_tokens: a map with more voxels than this is average-pooled to at most this many tokens first.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        attention: bool = True,
        pooling: str = "class_token",
        layers: int = 1,
        head_dim: int = 16,
        hidden: int | None = None,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        position: bool = True,
        max_tokens: int = 4096,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise UserError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if pooling not in ("class_token", "attention"):
            raise UserError(f"pooling must be 'class_token' or 'attention', got {pooling!r}")
        if num_classes < 2:
            raise UserError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.spatial_dims = spatial_dims
        self.attention_enabled = attention
        self.pooling = pooling
        self.max_tokens = max_tokens
        heads = max(1, in_channels // head_dim)
        self.position: nn.Module | None = None
        self.blocks = nn.ModuleList()
        if attention:
            if position:
                conv = {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
                self.position = conv(in_channels, in_channels, 3, padding=1, groups=in_channels)
            if pooling == "class_token":
                self.class_token = nn.Parameter(torch.zeros(1, 1, in_channels))  # (1, 1, C)
                nn.init.trunc_normal_(self.class_token, std=0.02)
            count = layers if pooling == "class_token" else 1
            self.blocks.extend(TransformerBlock(in_channels, heads, attention_dropout=attention_dropout)
                               for _ in range(count))
        hidden = hidden or 2 * in_channels
        self.norm = nn.LayerNorm(in_channels)
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_classes))

    def tokens(self, features: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """The map as tokens: (B, N, C) and the token grid (at most ``max_tokens`` voxels)."""
        grid = tuple(features.shape[2:])
        if math.prod(grid) > self.max_tokens:
            side = max(1, round(self.max_tokens ** (1.0 / len(grid))))
            while side > 1 and side ** len(grid) > self.max_tokens:
                side -= 1
            grid = tuple(min(s, side) for s in grid)
            pool = {2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[self.spatial_dims]
            features = pool(features, grid)  # (B, C, *grid)
        if self.position is not None:
            features = features + self.position(features)
        return features.flatten(2).transpose(1, 2), grid  # (B, N, C)

    def forward(self, features: torch.Tensor, return_weights: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Args:
            features: (B, C, *S) bottleneck feature map.
            return_weights: also return the class token's attention over the map, (B, heads, *S') on the token
                grid S' (the last block's weights; needs attention on). Per head they sum to at most 1: the
                rest is the query token attending to itself.

        Returns:
            Logits (B, K) (and the weights).
        """
        if not self.attention_enabled:
            if return_weights:
                raise UserError("this head was built with attention=False: it has no attention weights")
            descriptor = features.flatten(2).mean(-1)  # (B, C): global average pooling
            return self.mlp(self.norm(descriptor))
        tokens, grid = self.tokens(features)  # (B, N, C)
        batch = tokens.shape[0]
        if self.pooling == "class_token":
            query = self.class_token.expand(batch, -1, -1)  # (B, 1, C)
        else:
            query = tokens.mean(dim=1, keepdim=True)  # (B, 1, C): the average-pooled map asks
        x = torch.cat([query, tokens], dim=1)  # (B, 1 + N, C)
        weights = None
        for index, block in enumerate(self.blocks):
            last = index == len(self.blocks) - 1
            # the last block only needs the first token's output: update that one alone (same result, less work)
            result = block(x, queries=1 if last else None, return_weights=return_weights and last)
            x, weights = result if (return_weights and last) else (result, weights)
        descriptor = x[:, 0]  # (B, C)
        logits = self.mlp(self.norm(descriptor))  # (B, K)
        if return_weights:
            weights = weights[:, :, 0, 1:]  # (B, h, N): first token -> map tokens
            return logits, weights.reshape(batch, weights.shape[1], *grid)
        return logits


class AttentionClassifier(nn.Module):
    """Encoder of :class:`AttentionSkipUNet` + :class:`ClassificationHead` (+ the decoder for multi-task).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels (1 grayscale, 3 RGB, or modalities).
        num_classes: classes K.
        channels: encoder channels per level, finest first.
        attention: attention in the head (and in the skips when multi-task); False = the matched baseline.
        pooling, layers, hidden, dropout, position: see :class:`ClassificationHead`.
        segmentation_classes: when > 0, keep the U-Net decoder and also return segmentation logits with this
            many classes (background included).
        first_stride, norm, residual, head_dim, window_size, global_levels, global_max_tokens,
            attention_dropout, attention_pool, decoder_layers: as in :class:`AttentionSkipUNet`.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = (16, 32, 64, 128),
        attention: bool = True,
        pooling: str = "class_token",
        layers: int = 1,
        hidden: int | None = None,
        dropout: float = 0.1,
        position: bool = True,
        segmentation_classes: int = 0,
        first_stride: int = 1,
        norm: str = "instance",
        residual: bool = True,
        head_dim: int = 16,
        window_size: int = 4,
        global_levels: int = 1,
        global_max_tokens: int = 4096,
        attention_dropout: float = 0.0,
        attention_pool: Sequence[int] = (4, 2),
        decoder_layers: int = 2,
    ) -> None:
        super().__init__()
        self.multitask = segmentation_classes > 0
        self.backbone = AttentionSkipUNet(
            spatial_dims, in_channels, max(segmentation_classes, 1), channels=channels, attention=attention,
            head_dim=head_dim, window_size=window_size, global_levels=global_levels,
            global_max_tokens=global_max_tokens, attention_dropout=attention_dropout, position=position, norm=norm,
            first_stride=first_stride, residual=residual, decoder=self.multitask, attention_pool=attention_pool,
            decoder_layers=decoder_layers,
        )
        self.head = ClassificationHead(
            spatial_dims, channels[-1], num_classes, attention=attention, pooling=pooling, layers=layers,
            head_dim=head_dim, hidden=hidden, dropout=dropout, attention_dropout=attention_dropout,
            position=position, max_tokens=global_max_tokens,
        )

    @property
    def divisor(self) -> int:
        """Inputs are zero-padded to a multiple of this per axis; sizes that are multiples avoid padding."""
        return self.backbone.divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Args: x: (B, in_channels, *S). Returns class logits (B, K); multi-task: (class logits (B, K),
        segmentation logits (B, segmentation_classes, *S))."""
        features = self.backbone.encode(x)  # finest first; features[-1]: (B, C, *S / divisor)
        logits = self.head(features[-1])  # (B, K)
        if self.multitask:
            return logits, self.backbone.decode(features, x.shape[2:])
        return logits

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Where the class token looked: (B, heads, *S') weights on the bottleneck's token grid S'."""
        features = self.backbone.encode(x)
        _, weights = self.head(features[-1], return_weights=True)
        return weights
