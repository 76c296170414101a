"""``medseg-attn export`` for segmentation models, and prediction with an exported ONNX file.

* :func:`export_segmentation`: a run folder or checkpoint -> TorchScript (``.ts``), ONNX (``.onnx``) or a MONAI
  bundle (a folder, see :mod:`medseg_attn.segmentation.export.bundle`); every export carries the model card, labels,
  colours, preprocessing and config (see :mod:`medseg_attn.networks.export`).
* :func:`predictor_from_onnx`: a :class:`~medseg_attn.segmentation.inference.predictor.Predictor` whose network is the
  ONNX file run by onnxruntime: the same preprocessing, sliding window, resampling and writers as PyTorch.

See ``docs/export.md``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medseg_attn.config import from_dict
from medseg_attn.errors import UserError
from medseg_attn.networks.export import (
    OnnxNetwork,
    example_input,
    export_onnx,
    export_target,
    export_torchscript,
    read_metadata,
)
from medseg_attn.io.model_files import sniff_model, wrong_model_message
from medseg_attn.segmentation.inference.cvrun import is_cv_run, parse_postprocessing
from medseg_attn.segmentation.inference.predictor import Predictor
from medseg_attn.segmentation.task import TASK
from medseg_attn.segmentation.data.transforms import Preprocessing
from medseg_attn.training.card import export_metadata
from medseg_attn.training.checkpoint import find_checkpoint, load_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["EXPORT_FORMATS", "check_onnx_options", "export_segmentation", "load_segmentation", "predictor_from_onnx"]

EXPORT_FORMATS = ("torchscript", "onnx", "bundle")


def load_segmentation(model: str | Path) -> tuple[Any, dict[str, Any], Path]:
    """The network (eval, CPU, fp32), the checkpoint payload and its path for a run folder or checkpoint.

    Raises:
        ValueError: not a segmentation checkpoint, or one that does not fit this version.
    """
    path = find_checkpoint(model)
    payload = load_checkpoint(path)
    return TASK.network(payload, path), payload, path


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
        raise ValueError(f"--format {fmt!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    if is_cv_run(model):  # the folds as one network
        from medseg_attn.segmentation.export.ensemble import export_cv_run

        return export_cv_run(model, fmt, output)
    network, payload, path = load_segmentation(model)
    target = export_target(model, path, fmt, output)  # the output rule: before any work
    if fmt == "bundle":
        from medseg_attn.segmentation.export.bundle import write_bundle

        return write_bundle(network, payload, path, target)
    if not hasattr(network, "divisor"):
        raise ValueError(f"{path}: export supports the attention_skip_unet architecture, not "
                         f"{type(network).__name__}")
    example = example_input(int(payload["preprocessing"]["spatial_dims"]), int(payload["in_channels"]),
                            network.divisor)
    metadata = export_metadata(payload, str(path), TASK)
    writer = export_torchscript if fmt == "torchscript" else export_onnx
    writer(network, example, target, metadata)
    logger.info("exported %s as %s: %s", path, fmt, target)
    return target


def check_onnx_options(path: str | Path, folds: list[int] | None, device: str) -> None:
    """Refuse ``predict`` options the onnxruntime engine cannot honour, instead of ignoring them: ``--folds`` (an
    exported ensemble is one graph holding every fold it was exported with) and a ``--device`` other than auto or
    cpu (the engine runs on the CPU).

    Raises:
        UserError: one line naming the option, its value and the way out.
    """
    if folds is not None:
        raise UserError(f"--folds {' '.join(map(str, folds))}: {path} is an exported model run whole by onnxruntime "
                        f"(an ensemble holds every fold it was exported with); predict with the cross-validation "
                        f"run folder (--engine torch --model CV_RUN --folds ...) or drop --folds")
    if str(device).strip().lower() not in ("auto", "cpu"):
        raise UserError(f"--device {device}: --engine onnxruntime runs on the CPU; drop --device (or give cpu), or "
                        f"predict with the run folder on {device} (--engine torch)")


def predictor_from_onnx(path: str | Path, threads: int = 0, **inference: Any) -> Predictor:
    """A predictor running an ONNX file exported by :func:`export_segmentation` with onnxruntime (CPU).

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime intra-op threads (0 = its default).
        inference: overrides of the saved inference config (``tta``, ``overlap``, ``sw_batch_size``).

    Raises:
        FileNotFoundError: no such file. ValueError: not a medseg-attn segmentation export.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX file not found")
    kind = sniff_model(path)
    if kind != "onnx":
        raise ValueError(wrong_model_message(path, kind, "an ONNX file"))
    metadata = read_metadata(path)
    if not TASK.owns(metadata):
        raise ValueError(f"{path}: is a {metadata['task']} model; use `medseg-attn classify predict` for it")
    config = from_dict(metadata["config"])
    if inference:
        config = config.replace(inference={k: v for k, v in inference.items() if v is not None})
    prep = Preprocessing.from_dict(metadata["preprocessing"])
    labels = {int(k): v for k, v in metadata["labels"].items()}
    patch = config.inference.patch_size or config.data.patch_size
    predictor = Predictor(OnnxNetwork(path, threads), prep, labels, patch, config.inference, "cpu",
                          int(metadata["in_channels"]), [str(path)])
    predictor.colors.update({int(k): list(v) for k, v in (metadata.get("colors") or {}).items()})
    predictor.temperatures = [float((metadata.get("calibration") or {}).get("temperature", 1.0))]  # as PyTorch
    predictor.postprocessing = parse_postprocessing(metadata.get("postprocessing") or {}, str(path),
                                                  labels)  # a CV export
    predictor.model_info = {k: metadata.get(k) for k in ("card", "plan", "epoch", "best_metric", "labels",
                                                         "calibration", "training_fingerprint")}
    return predictor
