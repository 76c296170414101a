"""Fine-tuning (``train --init-from RUN|CHECKPOINT|BUNDLE``): a new run starts from a trained network's weights
(a run folder, a checkpoint, or a MONAI bundle medseg-attn exported: its ``models/model.pt``).

Encoder, skip attention and decoder weights are copied as they are; the output layers (``head`` and the deep
supervision heads) keep the rows of the classes both label sets name alike (background always) and a fresh
initialisation for the others. The new run plans its own spacing, patch and intensity normalisation from its own
data (the source's plan is not reused). The checkpoint is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from medseg_attn.config import Config
from medseg_attn.config.loading import differing_keys, from_dict
from medseg_attn.errors import UserError
from medseg_attn.io.manifest import file_sha256
from medseg_attn.model_layout import find_checkpoint
from medseg_attn.segmentation.measures.regions import Regions
from medseg_attn.segmentation.task import TASK
from medseg_attn.training.checkpoint import load_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["check_source", "load_initial_weights"]

OUTPUT_LAYERS = ("head.", "deep_heads.")


def _class_axis(network: nn.Module, key: str) -> int:
    """The axis of an output-layer tensor that runs over classes (transposed convolutions: axis 1 of weight)."""
    module = network.get_submodule(key.rsplit(".", 1)[0])
    transposed = isinstance(module, nn.modules.conv._ConvTransposeNd) or type(module).__name__ == "UpsampleHead"
    return 1 if transposed and key.endswith("weight") else 0


FREE_MODEL_KEYS = ("attention_dropout",)  # no weights behind them: may differ from the source's


def _source(source: str | Path, model: Any | None, in_channels: int | None) -> tuple[Path, dict[str, Any]]:
    """The checkpoint at ``source`` and its payload, checked against the new run's model section and channels."""
    path = find_checkpoint(source)
    checkpoint = load_checkpoint(path)
    if not TASK.owns(checkpoint):
        raise UserError(f"{path}: --init-from needs a segmentation model, this is a {checkpoint.task} model")
    if in_channels is not None and checkpoint.in_channels is not None and int(checkpoint.in_channels) != in_channels:
        raise UserError(f"{path}: trained on {checkpoint.in_channels} input channel(s), the new data has "
                        f"{in_channels}")
    saved = checkpoint.config.get("model")
    if model is not None and saved is not None:
        source_model = from_dict({"model": saved}, Config).model
        differing = [f"model.{key} (source {a!r}, this run {b!r})"
                     for key, a, b in differing_keys(source_model, model, FREE_MODEL_KEYS)]
        if differing:
            raise UserError(f"{path}: --init-from needs the source's model section, and this run's differs in "
                            f"{', '.join(differing)}; set these keys as the source has them")
    return path, checkpoint


def check_source(source: str | Path, model: Any, in_channels: int | None = None) -> dict[str, str]:
    """Before any work: the model ``--init-from`` names exists, loads, is a segmentation model with this run's
    model section (and input channels, where known); returns ``{"path", "checkpoint", "sha256"}`` (absolute
    paths; the SHA-256 of the checkpoint file), what a CV run records to start its remaining folds alike.

    Raises:
        FileNotFoundError: nothing at ``source``.
        UserError: another task, model section or input channels (one line naming the keys).
    """
    path, _ = _source(source, model, in_channels)
    return {"path": str(Path(source).expanduser().resolve()), "checkpoint": str(path.resolve()),
            "sha256": file_sha256(path)}


def load_initial_weights(network: nn.Module, source: str | Path, labels: dict[int, str], in_channels: int,
                         model: Any | None = None, regions: Regions | None = None) -> dict:
    """Copy the weights of the model at ``source`` into ``network`` (trained for ``labels``); returns what was done.

    Args:
        model: the new run's model section (``config.model``): refused when it differs from the source's.
        regions: a region run's regions (its outputs are matched by region name); the source must be a region
            model too, and a class run's source a class model.

    Raises:
        FileNotFoundError: nothing at ``source``.
        ValueError: another architecture, model section, channels or input channels than the network's (one line
            naming the checkpoint and the differing keys, or the first mismatching weight).
    """
    path, checkpoint = _source(source, model, in_channels)
    old_regions = Regions.from_dict(checkpoint.regions)
    if (old_regions is None) != (regions is None):
        kinds = ("a region model (sigmoid outputs)", "a class model (softmax outputs)")
        raise UserError(f"{path}: is {kinds[old_regions is None]} and this run trains {kinds[regions is None]}; "
                        f"their output layers mean different things: fine-tune from a model of the same kind")
    old_labels = dict(enumerate(old_regions.names)) if old_regions else checkpoint.labels
    labels = dict(enumerate(regions.names)) if regions else labels  # the network's outputs, by name
    old_index = {name.lower(): index for index, name in old_labels.items()}
    kept = {index: old_index[name.lower()] for index, name in labels.items() if name.lower() in old_index}
    if regions is None:
        kept[0] = 0  # background is background
    state, old = network.state_dict(), checkpoint.model
    copied, renewed = 0, []
    for key, value in state.items():
        if key not in old:
            raise UserError(f"{path}: has no weight {key}: another architecture than model.* of this run "
                             f"(fine-tuning needs the same model section)")
        if key.startswith(OUTPUT_LAYERS) and old[key].ndim >= 1:
            axis = _class_axis(network, key)
            if old[key].shape[axis] == len(old_labels) and value.shape[axis] == len(labels):
                fresh = value.clone()
                for new, previous in kept.items():
                    fresh.select(axis, new).copy_(old[key].select(axis, previous))
                state[key] = fresh
                renewed.append(key)
                continue
        if old[key].shape != value.shape:
            raise UserError(f"{path}: weight {key} has shape {tuple(old[key].shape)}, this run's network "
                             f"{tuple(value.shape)}: fine-tuning needs the same model section")
        state[key] = old[key].to(value.dtype)
        copied += 1
    unused = sorted(key for key in old if key not in state)
    if unused:  # the source has weights this network lacks: another architecture (e.g. attention on -> off)
        raise UserError(f"{path}: {len(unused)} of its weights have no place in this run's network (e.g. "
                        f"{unused[0]}): another architecture than model.* of this run (fine-tuning needs the same "
                        f"model section)")
    network.load_state_dict(state)
    new_classes = sorted(name for index, name in labels.items() if index not in kept)
    logger.info("initialised from %s: %d weights copied, output layer: %d classes kept by name, new: %s", path,
                copied, len(kept), ", ".join(new_classes) or "none")
    return {"source": str(path), "kept_classes": {labels[i]: old_labels[j] for i, j in kept.items()},
            "new_classes": new_classes}
