"""medseg-attn: 3D medical image segmentation with attention in the U-Net skips, on MONAI."""
__version__ = "0.1.0"
