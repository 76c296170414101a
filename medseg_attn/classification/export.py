"""``medseg-attn export`` for classification models: TorchScript or ONNX (no MONAI bundle).

The exported graph takes images (B, C, *S) of any size (the encoder pads to its divisor inside the graph, the
head pools over whatever token grid comes out) and returns the class logits (B, K); a multi-task model exports
its class logits only. The file carries the classes, preprocessing, config and model card (see
:mod:`medseg_attn.networks.export` and ``docs/export.md``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from medseg_attn.classification.predictor import Classifier
from medseg_attn.classification.task import TASK
from medseg_attn.errors import UserError
from medseg_attn.model_layout import find_checkpoint
from medseg_attn.networks.export import example_input, export_onnx, export_target, export_torchscript
from medseg_attn.training.card import export_metadata
from medseg_attn.training.checkpoint import load_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["export_classifier"]

SUFFIXES = {"torchscript": ".ts", "onnx": ".onnx"}


def export_classifier(model: str | Path, fmt: str, output: str | Path) -> Path:
    """Export a classification run folder or checkpoint to ``output`` (suffix added when missing).

    Raises:
        ValueError: 'bundle' or an unknown format, not a classification model, or an export the checker rejects.
    """
    if fmt not in SUFFIXES:
        raise UserError(f"--format {fmt!r}: a classification model exports as torchscript or onnx (MONAI bundles "
                         f"are for segmentation models)")
    classifier = Classifier.from_checkpoint(model, device="cpu")
    path = find_checkpoint(model)
    checkpoint = load_checkpoint(path)
    network = classifier.network.eval()
    example = example_input(int(checkpoint.preprocessing["spatial_dims"]), int(checkpoint.in_channels),
                            network.divisor)
    target = export_target(model, path, fmt, output)
    writer = export_torchscript if fmt == "torchscript" else export_onnx
    writer(network, example, target, export_metadata(checkpoint, str(path), TASK))
    logger.info("exported %s as %s: %s", path, fmt, target)
    return target
