"""Networks: the multi-head attention block, the attention-skip U-Net and the classification head."""

from medseg_attn.networks.attention import (
    MultiHeadAttention,
    pad_to_multiple,
    padding_key_mask,
    reference_attention,
    window_merge,
    window_partition,
)
from medseg_attn.networks.heads import AttentionClassifier, ClassificationHead, TransformerBlock
from medseg_attn.networks.unet import AttentionSkipUNet, ConvBlock, SkipAttention

__all__ = [
    "AttentionClassifier",
    "AttentionSkipUNet",
    "ClassificationHead",
    "ConvBlock",
    "MultiHeadAttention",
    "SkipAttention",
    "TransformerBlock",
    "pad_to_multiple",
    "padding_key_mask",
    "reference_attention",
    "window_merge",
    "window_partition",
]
