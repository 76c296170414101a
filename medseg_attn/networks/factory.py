"""Build the network named in a :class:`~medseg_attn.config.ModelConfig` (ours, or MONAI's for comparisons)."""

from __future__ import annotations

from torch import nn

from medseg_attn.config import ClassifyModelConfig, ModelConfig
from medseg_attn.errors import UserError
from medseg_attn.networks.heads import AttentionClassifier
from medseg_attn.networks.unet import AttentionSkipUNet

__all__ = ["build_classifier", "build_network"]


def build_network(model: ModelConfig, spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    """Instantiate the configured network.

    ``monai_unet`` and ``monai_attention_unet`` build MONAI's ``UNet`` (2 residual units) and ``AttentionUnet``
    with the same channels and strides, so accuracy and speed can be compared in one pipeline.
    """
    channels = tuple(model.channels)
    if model.architecture == "attention_skip_unet":
        return AttentionSkipUNet(
            spatial_dims, in_channels, out_channels, channels=channels, attention=model.attention,
            head_dim=model.head_dim, window_size=model.window_size, global_levels=model.global_levels,
            global_max_tokens=model.global_max_tokens, attention_dropout=model.attention_dropout,
            position=model.position, attention_pool=tuple(model.attention_pool),
            norm=model.norm, first_stride=model.first_stride, residual=model.residual,
            deep_supervision=model.deep_supervision, decoder_layers=model.decoder_layers,
        )
    from monai.networks.nets import AttentionUnet, UNet

    strides = (2,) * (len(channels) - 1)
    if model.architecture == "monai_unet":
        return UNet(spatial_dims, in_channels, out_channels, channels, strides, num_res_units=2, norm="instance")
    if model.architecture == "monai_attention_unet":
        return AttentionUnet(spatial_dims, in_channels, out_channels, channels, strides)
    raise UserError(f"unknown model.architecture {model.architecture!r}")


def build_classifier(model: ClassifyModelConfig, spatial_dims: int, in_channels: int, num_classes: int,
                     segmentation_classes: int = 0) -> AttentionClassifier:
    """The configured classifier: the U-Net encoder + classification head (+ decoder when multi-task)."""
    return AttentionClassifier(
        spatial_dims, in_channels, num_classes, channels=tuple(model.channels), attention=model.attention,
        pooling=model.pooling, layers=model.head_layers, hidden=model.hidden, dropout=model.dropout,
        position=model.position, segmentation_classes=segmentation_classes, first_stride=model.first_stride,
        norm=model.norm, residual=model.residual, head_dim=model.head_dim, window_size=model.window_size,
        global_levels=model.global_levels, global_max_tokens=model.global_max_tokens,
        attention_dropout=model.attention_dropout, attention_pool=tuple(model.attention_pool),
        decoder_layers=model.decoder_layers,
    )
