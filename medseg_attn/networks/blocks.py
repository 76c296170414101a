"""Convolution building blocks of the U-Net: the residual conv block and the output upsampling head."""

from __future__ import annotations

import torch
from torch import nn

from medseg_attn.errors import UserError

__all__ = ["ConvBlock", "UpsampleHead", "conv_class", "conv_function", "norm_layer"]


def conv_class(spatial_dims: int) -> type[nn.Module]:
    return {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


def conv_function(spatial_dims: int):
    """``conv2d`` or ``conv3d`` of ``torch.nn.functional``."""
    return {2: nn.functional.conv2d, 3: nn.functional.conv3d}[spatial_dims]


class _GroupNormPath:
    """Instance norm (affine, no running statistics) computed by ``F.group_norm`` with one group per channel: the
    same values (within 5e-7) and parameters, about 5x faster forward and 1.3x forward + backward on CPU than
    PyTorch's instance-norm kernel (2.2 vs 0.42 ms for 4 x 16 x 32^3; docs/benchmarks.md, "Ordinary CPUs")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.group_norm(x, self.num_features, self.weight, self.bias, self.eps)


class InstanceNorm2d(_GroupNormPath, nn.InstanceNorm2d):
    pass


class InstanceNorm3d(_GroupNormPath, nn.InstanceNorm3d):
    pass


def norm_layer(spatial_dims: int, kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return {2: InstanceNorm2d, 3: InstanceNorm3d}[spatial_dims](channels, affine=True)
    if kind == "batch":
        return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims](channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise UserError(f"unknown norm {kind!r}; expected one of 'instance', 'batch', 'group'")


class UpsampleHead(nn.Module):
    """``nn.ConvTranspose{2,3}d(in, out, 3, stride=2, padding=1, output_padding=1)``, computed faster.

    Output voxel ``2 i + r`` (phase r = 0 or 1 per axis) of that transposed convolution reads input voxels ``i``
    and ``i + 1`` through kernel taps that depend only on r. So one stride-1 convolution with 2-tap kernels gives
    all 2^D phases as channels (the kernel gathered from the transposed weight, zero where a phase has no tap),
    and interleaving them (pixel shuffle) gives the same output. PyTorch runs a transposed convolution with output
    padding on a slow CPU path: this is faster there (timing: docs/benchmarks.md, "Timings behind design
    choices") and equal within float rounding. Parameters and their names are those of the transposed convolution, so
    checkpoints load either way.
    """

    # (output phase r, input offset d) -> kernel tap; 3 indexes the zero appended to each kernel axis
    TAPS = ((1, 3), (2, 0))

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        reference = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims](
            in_channels, out_channels, 3, stride=2, padding=1, output_padding=1)  # its initialisation
        self.spatial_dims = spatial_dims
        self.weight = reference.weight  # (C_in, C_out, 3, 3[, 3])
        self.bias = reference.bias  # (C_out,)

    def phase_kernel(self) -> torch.Tensor:
        """(C_out * 2^D, C_in, 2, 2[, 2]) stride-1 kernel whose channel ``o * 2^D + phase`` is phase ``phase`` of
        output channel ``o`` (phase index = r_1 r_2 [r_3] in binary)."""
        dims = self.spatial_dims
        c_in, c_out = self.weight.shape[:2]
        padded = nn.functional.pad(self.weight, (0, 1) * dims)  # (C_in, C_out, 4, 4[, 4]), tap 3 = 0
        taps = torch.tensor(self.TAPS, device=self.weight.device)  # (r, d)
        index = [taps.view([2 if a == axis else 1 for a in range(dims)] + [2 if a == axis else 1 for a in range(dims)])
                 for axis in range(dims)]  # axis a: taps over (r_a, d_a), broadcast over the other axes
        gathered = padded[(slice(None), slice(None), *index)]  # (C_in, C_out, *r, *d)
        order = [1, *range(2, 2 + dims), 0, *range(2 + dims, 2 + 2 * dims)]
        return gathered.permute(order).reshape(c_out * 2**dims, c_in, *(2,) * dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, *S) -> (B, C_out, *2S)."""
        dims = self.spatial_dims
        conv = conv_function(dims)
        bias = self.bias.repeat_interleave(2**dims) if self.bias is not None else None
        phases = conv(nn.functional.pad(x, (0, 1) * dims), self.phase_kernel(), bias)  # (B, C_out * 2^D, *S)
        batch, spatial = x.shape[0], phases.shape[2:]
        phases = phases.view(batch, -1, *(2,) * dims, *spatial)  # (B, C_out, *r, *S)
        order = [0, 1] + [axis for a in range(dims) for axis in (2 + dims + a, 2 + a)]  # (B, C_out, S_1, r_1, ...)
        return phases.permute(order).reshape(batch, -1, *(2 * n for n in spatial))  # (B, C_out, *2S)


class ConvBlock(nn.Module):
    """Two (conv 3x3[x3] -> norm) layers with LeakyReLU; the first may stride to downsample.

    With ``residual`` the input is added back before the last activation (through a strided 1x1 convolution
    when the shape changes), as in ResNet / nnU-Net ResEnc blocks. ``layers=1``: one conv -> norm -> LeakyReLU
    (no shortcut), the light decoder block (MONAI's ``UNet`` decoder has one convolution per level too).
    """

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, stride: int = 1, norm: str = "instance",
                 residual: bool = True, layers: int = 2):
        super().__init__()
        if layers not in (1, 2):
            raise UserError(f"a convolution block has 1 or 2 layers, got {layers}")
        conv = conv_class(spatial_dims)
        self.conv1 = conv(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.norm1 = norm_layer(spatial_dims, norm, out_ch)
        self.act = nn.LeakyReLU(0.01, inplace=True)
        self.conv2: nn.Module | None = None
        self.shortcut: nn.Module | None = None
        if layers == 1:
            return
        self.conv2 = conv(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = norm_layer(spatial_dims, norm, out_ch)
        if residual:
            same = in_ch == out_ch and stride == 1
            self.shortcut = nn.Identity() if same else nn.Sequential(
                conv(in_ch, out_ch, 1, stride=stride, bias=False), norm_layer(spatial_dims, norm, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm1(self.conv1(x)))  # (B, out_ch, *S / stride)
        if self.conv2 is None:
            return h
        h = self.norm2(self.conv2(h))
        if self.shortcut is not None:
            h = h + self.shortcut(x)
        return self.act(h)
