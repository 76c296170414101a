"""Networks: the multi-head attention block and the attention-skip U-Net."""

from medseg_attn.networks.attention import (
    MultiHeadAttention,
    pad_to_multiple,
    padding_key_mask,
    reference_attention,
    window_merge,
    window_partition,
)
from medseg_attn.networks.unet import AttentionSkipUNet, ConvBlock, SkipAttention

__all__ = [
    "AttentionSkipUNet",
    "ConvBlock",
    "MultiHeadAttention",
    "SkipAttention",
    "pad_to_multiple",
    "padding_key_mask",
    "reference_attention",
    "window_merge",
    "window_partition",
]
