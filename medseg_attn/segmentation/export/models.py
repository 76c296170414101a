"""``medseg-attn export`` for segmentation models (an exported ONNX file is predicted with through
:func:`medseg_attn.segmentation.model.loading.load_model`, like every other model).

* :func:`export_segmentation`: a run folder or checkpoint -> TorchScript (``.ts``), ONNX (``.onnx``) or a MONAI
  bundle (a folder, see :mod:`medseg_attn.segmentation.export.bundle`); every export carries the model card, labels,
  colours, preprocessing and config (see :mod:`medseg_attn.networks.export`).

See ``docs/export.md``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medseg_attn.errors import UserError
from medseg_attn.model_layout import find_checkpoint, is_cv_run
from medseg_attn.networks.export import (
    example_input,
    export_onnx,
    export_target,
    export_torchscript,
)
from medseg_attn.segmentation.task import TASK
from medseg_attn.training.card import export_metadata
from medseg_attn.training.checkpoint import Checkpoint, load_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["EXPORT_FORMATS", "export_segmentation", "load_segmentation"]

EXPORT_FORMATS = ("torchscript", "onnx", "bundle")


def load_segmentation(model: str | Path) -> tuple[Any, Checkpoint, Path]:
    """The network (eval, CPU, fp32), the checkpoint and its path for a run folder or checkpoint.

    Raises:
        ValueError: not a segmentation checkpoint, or one that does not fit this version.
    """
    path = find_checkpoint(model)
    checkpoint = load_checkpoint(path)
    return TASK.network(checkpoint, path), checkpoint, path


def export_segmentation(model: str | Path, fmt: str, output: str | Path) -> Path:
    """Export a segmentation run folder or checkpoint.

    Args:
        model: run folder, ``.pt`` checkpoint, or a cross-validation run (its folds as one ensemble network, see
            :mod:`medseg_attn.segmentation.export.ensemble`).
        fmt: 'torchscript', 'onnx' or 'bundle'.
        output: the file to write (see :func:`~medseg_attn.networks.export.export_target`), or the bundle folder.

    Returns:
        The written file or folder.

    Raises:
        ValueError: unknown format, not a segmentation model, or an export the checker rejects.
    """
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"--format {fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    if is_cv_run(model):  # the folds as one network
        from medseg_attn.segmentation.export.ensemble import export_cv_run

        return export_cv_run(model, fmt, output)
    network, checkpoint, path = load_segmentation(model)
    target = export_target(model, path, fmt, output)  # the output rule: before any work
    if fmt == "bundle":
        from medseg_attn.segmentation.export.bundle import write_bundle

        return write_bundle(network, checkpoint, path, target)
    if not hasattr(network, "divisor"):
        raise UserError(f"{path}: export supports the attention_skip_unet architecture, not "
                         f"{type(network).__name__}")
    example = example_input(int(checkpoint.preprocessing["spatial_dims"]), int(checkpoint.in_channels),
                            network.divisor)
    metadata = export_metadata(checkpoint, str(path), TASK)
    writer = export_torchscript if fmt == "torchscript" else export_onnx
    writer(network, example, target, metadata)
    logger.info("exported %s as %s: %s", path, fmt, target)
    return target
