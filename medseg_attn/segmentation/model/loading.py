"""A trained segmentation model as one typed, frozen record, loaded by :func:`load_model` from whatever the user
names: a run folder, a checkpoint, a MONAI bundle medseg-attn exported, a cross-validation run (its folds as an
ensemble, with the postprocessing its CV chose), several of these (an ensemble), or an exported ``.onnx`` file
(run by onnxruntime). The only code that knows those layouts and the checkpoint's keys; the predictor, the
reports and the run manifest read the record."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from medseg_attn.config import Config, InferenceConfig, from_dict
from medseg_attn.errors import UserError
from medseg_attn.io.model_files import sniff_model, wrong_model_message
from medseg_attn.io.segments import resolve_colors
from medseg_attn.model_layout import cv_members, find_checkpoint, is_cv_run
from medseg_attn.segmentation.data.channels import channel_names
from medseg_attn.segmentation.data.transforms import Preprocessing
from medseg_attn.segmentation.measures.postprocessing import (
    ClassPostprocessing,
    parse_postprocessing,
    read_postprocessing,
)
from medseg_attn.segmentation.measures.regions import Regions
from medseg_attn.segmentation.task import TASK
from medseg_attn.training.checkpoint import load_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["ENGINES", "INFO_KEYS", "SegmentationModel", "check_onnx_options", "is_onnx", "load_model"]

ENGINES = ("torch", "onnxruntime")
INFO_KEYS = ("card", "plan", "epoch", "best_metric", "labels", "calibration", "training_fingerprint")


@dataclass(frozen=True)
class SegmentationModel:
    """Everything prediction needs of a trained model (one network or an ensemble trained the same way).

    Attributes:
        networks: the networks (PyTorch modules, or an onnxruntime session wrapped as one), in eval mode.
        prep: the preprocessing they were trained with.
        labels: class index -> name.
        config: the (first) model's configuration, inference overrides applied.
        in_channels: image channels the networks take.
        sources: where each network came from (checkpoint or ONNX paths), for messages and the run manifest.
        colors: class index -> RGB 0..255.
        temperatures: one per network (1.0: uncalibrated).
        postprocessing: per class, what to do after the argmax (a CV run's choice).
        info: the first model's card, plan, epoch, best metric, labels, calibration and training fingerprint.
        engine: 'torch' or 'onnxruntime'.
        regions: a region model's regions (sigmoid outputs painted into a label map); None: softmax classes.
        lesion_structures: class names whose components are lesions (dataset.json ``lesion_structures``).
    """

    networks: tuple[nn.Module, ...]
    prep: Preprocessing
    labels: Mapping[int, str]
    config: Config
    in_channels: int = 1
    sources: tuple[str, ...] = ()
    colors: Mapping[int, list[int]] = field(default_factory=dict)
    temperatures: tuple[float, ...] = ()
    postprocessing: Mapping[int, ClassPostprocessing] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)
    engine: str = "torch"
    regions: Regions | None = None
    lesion_structures: tuple[str, ...] = ()
    channel_names: tuple[str, ...] = ()  # one per input channel (dataset.json channel_names / modality)

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_names", channel_names(self.channel_names, self.in_channels))

    @property
    def inference(self) -> InferenceConfig:
        return self.config.inference

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(self.config.inference.patch_size or self.config.data.patch_size)


def _with_inference(config: Config, inference: Mapping[str, Any]) -> Config:
    overrides = {key: value for key, value in inference.items() if value is not None}
    return config.replace(inference=overrides) if overrides else config


def _colors(labels: Mapping[int, str], stored: Mapping[Any, Any] | None) -> dict[int, list[int]]:
    colors = resolve_colors(dict(labels))
    colors.update({int(k): list(v) for k, v in (stored or {}).items()})
    return colors


def load_model(model: str | Path | Sequence[str | Path], folds: Sequence[int] | None = None, engine: str = "torch",
               device: Any = "cpu", threads: int = 0, **inference: Any) -> SegmentationModel:
    """Load the model(s) the user named.

    Args:
        model: a run folder, checkpoint, bundle, CV run or ``.onnx`` file; several: an ensemble.
        folds: with a CV run: only these folds.
        engine: 'torch', or 'onnxruntime' for an exported ``.onnx`` file (which implies it).
        device: where PyTorch networks go (a resolved ``torch.device`` or its name).
        threads: onnxruntime intra-op threads (0: its default).
        inference: overrides of the saved inference settings (``tta``, ``overlap``, ``sw_batch_size``,
            ``precision``); None values keep the model's own.

    Raises:
        FileNotFoundError: nothing at a path. ValueError: not a segmentation model, members that differ, folds of
        something that is not a CV run, or an engine that does not fit the files.
    """
    models = [model] if isinstance(model, (str, Path)) else list(model)
    if not models:
        raise UserError("no model given")
    if engine not in ENGINES:
        raise UserError(f"--engine {engine}: expected one of {', '.join(ENGINES)}")
    onnx = [item for item in models if str(item).endswith(".onnx")]
    if is_onnx(models, engine):
        if len(models) != 1 or not onnx:
            raise UserError(f"--engine onnxruntime: give one .onnx file as --model (medseg-attn export --format "
                             f"onnx), got {' '.join(map(str, models))}")
        check_onnx_options(onnx[0], folds)
        return _load_onnx(Path(onnx[0]), threads, inference)
    return _load_checkpoints(models, folds, device, inference)


def is_onnx(model: Sequence[str | Path], engine: str = "torch") -> bool:
    """Whether ``model`` runs through onnxruntime (``--engine onnxruntime``, or a ``.onnx`` file, which implies it)."""
    return engine == "onnxruntime" or any(str(item).endswith(".onnx") for item in model)


def check_onnx_options(path: str | Path, folds: Sequence[int] | None, device: str = "cpu") -> None:
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


def _load_checkpoints(models: list[str | Path], folds: Sequence[int] | None, device: Any,
                      inference: Mapping[str, Any]) -> SegmentationModel:
    runs = [item for item in models if is_cv_run(item)]
    if folds is not None and not runs:
        raise UserError(f"--folds {' '.join(map(str, folds))}: choose folds of a cross-validation run folder "
                         f"(one with cv.json), got {' '.join(map(str, models))}")
    members = [member for item in models for member in (cv_members(item, folds) if is_cv_run(item) else [item])]
    networks, sources, temperatures = [], [], []
    first: dict[str, Any] = {}
    for item in members:
        path = find_checkpoint(item)
        checkpoint = load_checkpoint(path)
        if not TASK.owns(checkpoint):
            raise UserError(f"{path}: is a {checkpoint.task} model; use `medseg-attn classify predict` for it")
        network = TASK.network(checkpoint, path)
        try:
            config = from_dict(checkpoint.config)
            prep = Preprocessing.from_dict(checkpoint.preprocessing)
        except (KeyError, RuntimeError, TypeError) as error:
            raise UserError(f"{path}: checkpoint does not match this medseg-attn version ({error})") from None
        found = {"preprocessing": prep, "classes": checkpoint.labels, "input channels": int(checkpoint.in_channels),
                 "regions": Regions.from_dict(checkpoint.regions)}
        if not first:
            first = {"path": path, "config": config, "colors": checkpoint.colors, **found,
                     "lesion_structures": checkpoint.lesion_structures, "channel_names": checkpoint.channel_names,
                     "info": {key: checkpoint.get(key) for key in INFO_KEYS}}
        for key, value in found.items():
            if value != first[key]:
                raise UserError(f"{path}: ensemble member differs from {first['path']} in its {key} "
                                 f"({value} vs {first[key]}); an ensemble needs models trained the same way")
        temperatures.append(float(checkpoint.calibration.get("temperature", 1.0)))
        logger.info("loaded %s (epoch %s, best validation Dice %s)", path, checkpoint.epoch, checkpoint.best_metric)
        networks.append(network.to(device).eval())
        sources.append(str(path))
    return SegmentationModel(
        networks=tuple(networks), prep=first["preprocessing"], labels=first["classes"],
        config=_with_inference(first["config"], inference), in_channels=first["input channels"],
        sources=tuple(sources), colors=_colors(first["classes"], first["colors"]),
        temperatures=tuple(temperatures),  # each member calibrated as it was fitted, then averaged
        postprocessing=read_postprocessing(runs[0], first["classes"]) if len(runs) == 1 else {},
        info=first["info"], engine="torch", regions=first["regions"],
        lesion_structures=tuple(first["lesion_structures"] or ()), channel_names=tuple(first["channel_names"] or ()))


def _load_onnx(path: Path, threads: int, inference: Mapping[str, Any]) -> SegmentationModel:
    """An ONNX file exported by ``medseg-attn export``: the same preprocessing, labels, colours, temperature and
    postprocessing as the model it came from, read from its metadata."""
    from medseg_attn.networks.export import OnnxNetwork, read_metadata

    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX file not found")
    kind = sniff_model(path)
    if kind != "onnx":
        raise UserError(wrong_model_message(path, kind, "an ONNX file"))
    metadata = read_metadata(path)
    if not TASK.owns(metadata):
        raise UserError(f"{path}: is a {metadata['task']} model; use `medseg-attn classify predict` for it")
    labels = {int(k): v for k, v in metadata["labels"].items()}
    return SegmentationModel(
        networks=(OnnxNetwork(path, threads),), prep=Preprocessing.from_dict(metadata["preprocessing"]),
        labels=labels, config=_with_inference(from_dict(metadata["config"]), inference),
        in_channels=int(metadata["in_channels"]), sources=(str(path),), colors=_colors(labels, metadata.get("colors")),
        temperatures=(float((metadata.get("calibration") or {}).get("temperature", 1.0)),),  # as PyTorch
        postprocessing=parse_postprocessing(metadata.get("postprocessing") or {}, str(path), labels),  # CV
        info={key: metadata.get(key) for key in INFO_KEYS}, engine="onnxruntime",
        regions=Regions.from_dict(metadata.get("regions")),
        lesion_structures=tuple(metadata.get("lesion_structures") or ()),
        channel_names=tuple(metadata.get("channel_names") or ()))
