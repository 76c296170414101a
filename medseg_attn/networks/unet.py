"""AttentionSkipUNet: a U-Net whose skip connections pass through multi-head attention.

At every resolution level the decoder's upsampled features ask the encoder's skip features what to pass on:
decoder tokens are the queries, encoder tokens the keys and values, and the attended result is added to the
skip (a residual whose output projection starts at zero, so training starts from the plain U-Net). Fine levels
attend inside non-overlapping local windows, the coarsest levels globally (tiled into windows of at most
``global_max_tokens`` tokens on very large maps), so memory grows linearly with the number of voxels.

``attention=False`` removes the attention blocks and nothing else: the matched baseline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from medseg_attn.errors import UserError
from medseg_attn.networks.attention import (
    MultiHeadAttention,
    add_block_update,
    block_mean,
    pad_to_multiple,
    padding_key_mask,
    window_merge,
    window_partition,
)
from medseg_attn.networks.blocks import ConvBlock, UpsampleHead, conv_class, conv_function

__all__ = ["AttentionSkipUNet", "SkipAttention", "ConvBlock", "UpsampleHead"]


class SkipAttention(nn.Module):
    """Cross-attention from decoder features (queries) to encoder skip features (keys/values).

    Args:
        spatial_dims: 2 or 3.
        channels: channels C of both maps.
        heads: attention heads.
        window: window side per axis, or None for global attention.
        global_max_tokens: a global block whose map has more tokens than this tiles it into windows of at most
            this many tokens (keeps memory linear in the number of voxels on big inputs).
        dropout: attention-weight dropout (training only).
        pool: token side in voxels: 1 = one token per voxel; 2 = one token per 2x2(x2) block (average-pooled
            queries and keys/values), and the attended update is repeated back onto the block's voxels. A fine
            level's cost falls by pool**dims while its windows cover pool x more voxels per axis.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        heads: int,
        window: Sequence[int] | None,
        global_max_tokens: int = 4096,
        dropout: float = 0.0,
        position: bool = True,
        pool: int = 1,
    ) -> None:
        super().__init__()
        if pool < 1:
            raise UserError(f"attention pool must be >= 1, got {pool}")
        self.spatial_dims = spatial_dims
        self.pool = pool
        self.window = None if window is None else tuple(window)
        self.global_max_tokens = global_max_tokens
        self.norm_query = nn.LayerNorm(channels)
        self.norm_key_value = nn.LayerNorm(channels)
        # learned position of each voxel inside its window (windowed levels only), added to queries and keys:
        # lets a head prefer near or far voxels; cheaper than a relative-position bias, which forces SDPA off
        # its fused kernel
        self.position: nn.Parameter | None = None
        if position and self.window is not None:
            self.position = nn.Parameter(torch.zeros(math.prod(self.window), channels))  # (M, C)
            nn.init.trunc_normal_(self.position, std=0.02)
        self.attention = MultiHeadAttention(channels, heads, attn_dropout=dropout)
        nn.init.zeros_(self.attention.proj.weight)  # start as the identity skip: the plain U-Net
        nn.init.zeros_(self.attention.proj.bias)

    def window_for(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """The window actually used on a map of this spatial shape."""
        if self.window is None:
            if math.prod(spatial) <= self.global_max_tokens:
                return tuple(spatial)
            side = max(1, int(round(self.global_max_tokens ** (1.0 / len(spatial)))))
            return tuple(min(s, side) for s in spatial)
        return tuple(min(s, w) for s, w in zip(spatial, self.window, strict=True))

    def forward(
        self, skip: torch.Tensor, gate: torch.Tensor, return_weights: bool = False, return_received: bool = False,
        pooled_gate: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Args: skip, gate: (B, C, *S); pooled_gate: ``block_mean(gate, pool)`` when the caller has it more
        cheaply (pooled levels only). Returns the attended skip (B, C, *S), and with ``return_weights`` the
        weights (B*nW, h, M, M), or with ``return_received`` the attention each skip token receives, summed over
        the (real, unpadded) queries of its window: (B, h, *S / pool) float32 (token grid; each token covers a
        pool^dims block of voxels from the origin), reduced without keeping the weights."""
        if self.pool == 1:
            return self._attend(skip, gate, return_weights, return_received)
        tiled = all(s % self.pool == 0 for s in skip.shape[2:])  # the network pads its input so that it is
        coarse_skip = block_mean(skip, self.pool)  # (B, C, *ceil(S / pool))
        coarse_gate = block_mean(gate, self.pool) if pooled_gate is None else pooled_gate
        result = self._attend(coarse_skip, coarse_gate, return_weights, return_received, residual=False)
        update, extra = result if isinstance(result, tuple) else (result, None)
        if tiled:
            out = add_block_update(skip, update, self.pool)  # each token's update onto its pool^dims voxels
        else:
            batch, channels, *tokens = update.shape
            update = update.reshape(batch, channels, *[v for n in tokens for v in (n, 1)])  # (B, C, T0, 1, ..)
            update = update.expand(batch, channels, *[v for n in tokens for v in (n, self.pool)])
            update = update.reshape(batch, channels, *[n * self.pool for n in tokens])  # (B, C, *T * pool)
            out = skip + update[(slice(None), slice(None)) + tuple(slice(0, s) for s in skip.shape[2:])]
        return (out, extra) if extra is not None else out

    def _attend(
        self, skip: torch.Tensor, gate: torch.Tensor, return_weights: bool = False, return_received: bool = False,
        residual: bool = True,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Windowed attention on one token grid; returns skip + update (``residual``) or the update alone."""
        batch, channels, *spatial = skip.shape
        window = self.window_for(spatial)
        skip_padded, pads = pad_to_multiple(skip, window)
        gate_padded, _ = pad_to_multiple(gate, window)
        padded = skip_padded.shape[2:]
        key_value = self.norm_key_value(window_partition(skip_padded, window))  # (B*nW, M, C)
        query = self.norm_query(window_partition(gate_padded, window))  # (B*nW, M, C)
        if self.position is not None:
            position = self.position.view(*self.window, channels)[tuple(slice(0, w) for w in window)]
            position = position.reshape(1, -1, channels)  # (1, M, C)
            key_value = key_value + position
            query = query + position
        mask = padding_key_mask(padded, pads, window, batch, skip.device)  # (B*nW, 1, 1, M) or None
        crop = (slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)
        if return_received:
            query_mask = None if mask is None else mask[:, 0, 0, :]  # (B*nW, M): queries and keys share windows
            tokens, received = self.attention(query, key_value, mask=mask, return_received=True,
                                              query_mask=query_mask)  # (B*nW, M, C), (B*nW, h, M)
            received = window_merge(received.transpose(1, 2), window, padded)[crop]  # (B, h, *S)
            update = window_merge(tokens, window, padded)[crop]
            return (skip + update if residual else update), received
        result = self.attention(query, key_value, mask=mask, return_weights=return_weights)
        tokens, weights = result if return_weights else (result, None)
        out = window_merge(tokens, window, padded)  # (B, C, *padded)
        if any(pads):
            out = out[crop]
        if residual:
            out = skip + out
        return (out, weights) if return_weights else out


class AttentionSkipUNet(nn.Module):
    """2D/3D U-Net with a multi-head attention block in every skip connection.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (image modalities).
        out_channels: output channels (classes, background included).
        channels: feature channels per level, finest first; len(channels) - 1 downsamplings.
        attention: put attention in the skips; False gives the matched plain U-Net.
        head_dim: channels per attention head (heads = channels // head_dim, at least 1).
        window_size: window side at the windowed (fine) levels.
        global_levels: how many of the coarsest skip levels attend globally.
        global_max_tokens: cap on tokens per global attention window (see :class:`SkipAttention`).
        attention_dropout: dropout on attention weights (training only).
        position: learned within-window position embeddings at the windowed levels.
        attention_pool: token side per skip level, finest first (missing levels: 1); (4, 2) = the finest level
            attends over 4x4x4-voxel tokens and the next over 2x2x2 (64x and 8x fewer tokens where attention costs
            most). () = every level attends voxel by voxel (checkpoints from before this option).
        norm: 'instance' (default), 'batch' or 'group'.
        residual: residual convolution blocks (default) or plain ones.
        first_stride: 1 = the first level works at full resolution (nnU-Net style); 2 = the first level already
            downsamples and a transposed convolution brings the logits back to full resolution (MONAI UNet
            style: about 4x cheaper on CPU for a small cost in detail).
        deep_supervision: in training mode, also return logits from the coarser decoder levels.
        decoder_layers: convolutions per decoder level: 1 (conv -> norm -> LeakyReLU, the default: about a quarter
            fewer FLOPs than 2, as MONAI's ``UNet`` decoder) or 2 (a residual block like the encoder's; checkpoints
            from before this option).
        decoder: False builds the encoder only (for a classification head on the bottleneck): ``encode`` works,
            ``forward`` does not, and ``out_channels`` is unused.

    The encoder and decoder are also available on their own: ``encode(x)`` returns every level's features
    (what a :class:`~medseg_attn.networks.heads.ClassificationHead` reads), ``decode(features, shape)`` the logits.

    Inputs of any spatial size are accepted: they are zero-padded to a multiple of ``divisor`` internally
    (first_stride * 2**(len(channels)-1), or more when a pooled attention level's windows need it) and the output
    is cropped back to the input size.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        attention: bool = True,
        head_dim: int = 16,
        window_size: int = 4,
        global_levels: int = 1,
        global_max_tokens: int = 4096,
        attention_dropout: float = 0.0,
        position: bool = True,
        attention_pool: Sequence[int] = (4, 2),
        norm: str = "instance",
        first_stride: int = 2,
        residual: bool = True,
        deep_supervision: bool = False,
        decoder: bool = True,
        decoder_layers: int = 1,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise UserError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(channels) < 2:
            raise UserError(f"channels needs at least 2 levels, got {list(channels)}")
        self.spatial_dims = spatial_dims
        self.channels = tuple(channels)
        self.attention_enabled = attention
        self.deep_supervision = deep_supervision
        self.has_decoder = decoder
        levels = len(channels)
        if first_stride not in (1, 2):
            raise UserError(f"first_stride must be 1 or 2, got {first_stride}")
        self.divisor = first_stride * 2 ** (levels - 1)
        self.first_stride = first_stride
        skip_levels = levels - 1
        pools = [attention_pool[i] if i < len(attention_pool) and i < skip_levels - global_levels else 1
                 for i in range(skip_levels)]  # token side per skip level (global levels: 1)
        for i, pool in enumerate(pools):  # a pooled level's windows must tile its token grid: no padding inside
            # (the same with attention off or without the decoder: the baseline and an encoder pad as the U-Net)
            if pool > 1:
                self.divisor = math.lcm(self.divisor, first_stride * 2**i * pool * window_size)
        conv = conv_class(spatial_dims)
        transposed = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]

        self.encoders = nn.ModuleList(
            ConvBlock(spatial_dims, channels[i - 1] if i else in_channels, channels[i], 2 if i else first_stride, norm,
                      residual)
            for i in range(levels)
        )
        if not decoder:
            return
        self.upsamples = nn.ModuleList(
            transposed(channels[i + 1], channels[i], 2, stride=2, bias=False) for i in range(levels - 1)
        )
        self.decoders = nn.ModuleList(
            ConvBlock(spatial_dims, 2 * channels[i], channels[i], 1, norm, residual, decoder_layers)
            for i in range(levels - 1)
        )
        self.skip_attention = nn.ModuleList()
        for i in range(skip_levels):
            if not attention:
                self.skip_attention.append(nn.Identity())
                continue
            is_global = i >= skip_levels - global_levels
            window = None if is_global else (window_size,) * spatial_dims
            heads = max(1, channels[i] // head_dim)
            self.skip_attention.append(
                SkipAttention(spatial_dims, channels[i], heads, window, global_max_tokens, attention_dropout,
                              position, pools[i])
            )
        if first_stride == 1:
            self.head = conv(channels[0], out_channels, 1)
        else:  # level 0 is at half resolution: an overlapping (3x3[x3]) transposed convolution upsamples smoothly
            self.head = UpsampleHead(spatial_dims, channels[0], out_channels)
        self.deep_heads = nn.ModuleList(
            conv(channels[i], out_channels, 1) for i in range(1, levels - 1)
        ) if deep_supervision else nn.ModuleList()

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Args: x: (B, in_channels, *S). Returns logits (B, out_channels, *S); with deep supervision in
        training mode, a list [full-resolution logits, then coarser ones]."""
        return self._run(x, None)

    @property
    def attention_levels(self) -> list[str]:
        """Names of the skip levels that hold an attention block, finest first ('level0', 'level1', ...);
        empty with ``attention=False``."""
        if not self.attention_enabled or not self.has_decoder:
            return []
        return [f"level{i}" for i in range(len(self.skip_attention))]

    def forward_with_attention(self, x: torch.Tensor, per_head: bool = False
                               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and, per attention level, the attention each voxel *receives*, on the input's grid.

        At each level the weights are summed over the queries as they are computed (never stored whole), averaged
        over heads unless ``per_head``, and upsampled by the level's token size (stride x attention pool; linear
        interpolation of the token map, token centres on their block centres) to the input grid.

        Args:
            x: (B, in_channels, *S).
            per_head: keep heads apart.

        Returns:
            logits (B, out_channels, *S) and {level name: (B, heads or 1, *S) float32}.

        Raises:
            ValueError: the network was built with attention=False.
        """
        if not self.attention_levels:
            raise UserError("this network was built with attention=False: it has no attention maps")
        received: dict[int, torch.Tensor] = {}
        features = self.encode(x)
        logits = self.decode(features, x.shape[2:], received=received)
        logits = logits[0] if isinstance(logits, list) else logits
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        crop = (slice(None), slice(None)) + tuple(slice(0, s) for s in x.shape[2:])
        maps = {}
        for level in sorted(received):
            values = received[level] if per_head else received[level].mean(1, keepdim=True)  # (B, h or 1, *T_l)
            token = self.first_stride * 2**level * self.skip_attention[level].pool  # input voxels per token side
            size = [t * token for t in values.shape[2:]]  # the input extent the tokens cover (>= the padded input)
            maps[f"level{level}"] = nn.functional.interpolate(values, size=size, mode=mode,
                                                              align_corners=False)[crop]  # (B, h or 1, *S)
        return logits, maps

    def attention_weights(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run a forward pass and return each skip level's attention weights, finest level first.

        Each entry is (B * num_windows, heads, M, M) for that level's window of M tokens. Only for small
        inputs: the full matrices are kept.
        """
        if not self.attention_enabled:
            raise UserError("this network was built with attention=False: it has no attention weights")
        collected: dict[int, torch.Tensor] = {}
        self._run(x, collected)
        return [collected[level] for level in sorted(collected)]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run the encoder.

        Args:
            x: (B, in_channels, *S); zero-padded here to a multiple of ``divisor``.

        Returns:
            Every level's features, finest first: level i is (B, channels[i], *S_pad / (first_stride * 2**i)); the
            last entry is the bottleneck.
        """
        x, _ = pad_to_multiple(x, (self.divisor,) * self.spatial_dims)
        features = []
        h = x
        for encoder in self.encoders:  # level by level, finest first
            h = encoder(h)  # (B, channels[i], *S / 2**i)
            features.append(h)
        return features

    def decode(
        self, features: list[torch.Tensor], spatial: Sequence[int], collect: dict[int, torch.Tensor] | None = None,
        received: dict[int, torch.Tensor] | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Run the decoder on the output of :meth:`encode`.

        Args:
            features: the encoder's level features, finest first (bottleneck last).
            spatial: the input's spatial shape S (the logits are cropped back to it).
            collect: when given, each skip level's attention weights are stored in it by level.
            received: when given, each skip level's received attention (B, h, *S_level) is stored in it by level
                (see :meth:`SkipAttention.forward`).

        Returns:
            Logits (B, out_channels, *S); with deep supervision in training mode, a list [full-resolution logits,
            then coarser ones].
        """
        if not self.has_decoder:
            raise UserError("this network was built with decoder=False (encoder only): use encode()")
        skips = list(features)
        h = skips.pop()  # bottleneck
        outputs = []
        for level in reversed(range(len(self.decoders))):
            up = self.upsamples[level](h)  # (B, channels[level], *S_level)
            skip = skips[level]
            if self.attention_enabled:
                pooled = self._pooled_gate(level, h)  # block_mean(up, pool) from the coarse map, or None
                block = self.skip_attention[level]
                if received is not None:
                    skip, received[level] = block(skip, up, return_received=True, pooled_gate=pooled)
                elif collect is not None:
                    skip, collect[level] = block(skip, up, return_weights=True, pooled_gate=pooled)
                else:
                    skip = block(skip, up, pooled_gate=pooled)  # decoder asks, encoder answers
            h = self.decoders[level](torch.cat([up, skip], dim=1))  # (B, channels[level], *S_level)
            if self.deep_supervision and self.training and level > 0:
                outputs.append(self.deep_heads[level - 1](h))
        logits = self.head(h)[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]
        if outputs:
            return [logits] + outputs[::-1]
        return logits

    def _pooled_gate(self, level: int, coarse: torch.Tensor) -> torch.Tensor | None:
        """``block_mean(upsamples[level](coarse), pool)`` of a pooled attention level, without the upsampled map.

        The upsampling is a 2x2(x2) stride-2 transposed convolution: each 2^D block of its output holds the coarse
        voxel multiplied by the 2^D taps, so the block's mean is the coarse voxel multiplied by the taps' mean
        weight. The mean over a pool^D block is then that mean weight applied to the coarse map's mean over
        (pool / 2)^D blocks: a 1x1 convolution on a map pool^D / 2^D times smaller than reading the upsampled
        one (level 0: 4 MB -> 0.5 MB per step at the default sizes). None where this does not apply (unpooled
        levels, odd pools, sides that are not multiples).
        """
        pool = self.skip_attention[level].pool
        if pool == 1 or pool % 2 or any(n % (pool // 2) for n in coarse.shape[2:]):
            return None
        weight = self.upsamples[level].weight  # (C_coarse, C_level, 2, 2[, 2])
        mean = weight.mean(dim=tuple(range(2, weight.dim()))).t()  # (C_level, C_coarse)
        if pool > 2:
            coarse = block_mean(coarse, pool // 2)  # (B, C_coarse, *S_coarse / (pool / 2))
        kernel = mean.reshape(*mean.shape, *(1,) * self.spatial_dims)  # a 1x1(x1) convolution
        return conv_function(self.spatial_dims)(coarse, kernel)  # (B, C_level, *S_level / pool)

    def _run(self, x: torch.Tensor, collect: dict[int, torch.Tensor] | None) -> torch.Tensor | list[torch.Tensor]:
        return self.decode(self.encode(x), x.shape[2:], collect)
