"""medseg-attn: 3D medical image segmentation with attention in the U-Net skips, on MONAI."""
import os as _os
import sys as _sys

__version__ = "0.1.0"

if _sys.platform == "darwin" and "torch" not in _sys.modules:  # torch reads it once, when it loads
    _os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")  # operations Apple's MPS lacks run on the CPU
