"""Model card: what a user needs to trust a checkpoint or an export, stored in it and printed by ``inspect``.

A training run stores the checkpoint's ``card`` (see :func:`training_card`): the training data summary (cases,
spacing, modality, dataset), the command line, the time and the package versions. :func:`model_card` joins it
with what every checkpoint already holds (task, labels and colours, preprocessing, architecture, validation
metric and epoch) into one JSON-ready dict that exports carry; :func:`format_card` prints it.
"""

from __future__ import annotations

import datetime
import platform
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from medseg_attn.task import Task

if TYPE_CHECKING:
    from medseg_attn.training.checkpoint import Checkpoint

__all__ = ["training_card", "model_card", "format_card", "package_versions", "export_metadata"]


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages a model depends on."""
    import monai
    import numpy
    import torch

    from medseg_attn import __version__

    return {"medseg_attn": __version__, "torch": str(torch.__version__), "monai": str(monai.__version__),
            "numpy": str(numpy.__version__), "python": platform.python_version()}


def training_card(data: Mapping[str, Any]) -> dict[str, Any]:
    """The part of the card a training run knows at its start: ``data`` summary, command, time, versions.

    Args:
        data: training data summary, e.g. {"dataset": path, "training_cases": 20, "validation_cases": 4,
            "modality": "mr", "spacing": [2, 2, 2]}.
    """
    return {"data": dict(data), "command": " ".join(["medseg-attn", *sys.argv[1:]]),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": package_versions()}


def model_card(checkpoint: Mapping[str, Any], task: Task) -> dict[str, Any]:
    """The model card of a checkpoint of ``task`` (older checkpoints without ``card`` give what they hold); the
    task names the validation metric (:attr:`~medseg_attn.task.Task.card_metric`)."""
    from medseg_attn.training.checkpoint import Checkpoint

    checkpoint = Checkpoint.of(checkpoint)
    card, config = checkpoint.card, checkpoint.config
    model = config.get("model", {})
    return {
        "task": task.name,
        "labels": checkpoint.labels,
        "colors": {int(k): list(v) for k, v in checkpoint.colors.items()},
        "in_channels": checkpoint.in_channels,
        "channel_names": checkpoint.channel_names,  # dataset.json's, when it named them
        "regions": checkpoint.regions,  # a region model's regions (names, values, painting order)
        "preprocessing": checkpoint.preprocessing or None,
        "architecture": {key: model.get(key) for key in ("architecture", "channels", "attention", "first_stride",
                                                         "decoder_layers", "window_size", "head_dim") if key in model},
        "patch_size": config.get("data", {}).get("patch_size"),
        "data": card.get("data", {}),
        "metrics": {"metric": task.card_metric(checkpoint), "best": checkpoint.best_metric,
                    "best_epoch": checkpoint.best_epoch, "epochs": checkpoint.epoch,
                    "training_seconds": checkpoint.elapsed_seconds},
        "command": card.get("command"),
        "created": card.get("created"),
        "versions": card.get("versions") or checkpoint.versions,
    }


def format_card(card: Mapping[str, Any], source: str = "") -> list[str]:
    """Lines that describe a model card for a terminal."""
    lines = [f"model: {source}" if source else "model", f"  task: {card['task']}"]
    colours = card.get("colors") or {}
    names = ", ".join(f"{index}={name}" + (" #%02x%02x%02x" % tuple(colours[index]) if index in colours else "")
                      for index, name in sorted(card["labels"].items()))
    lines.append(f"  classes: {names}")
    names = card.get("channel_names")
    lines.append(f"  input channels: {card.get('in_channels')}" + (f" ({', '.join(names)})" if names else ""))
    if card.get("regions"):
        regions = card["regions"]
        lines.append("  regions (sigmoid outputs, painted in this order): " + ", ".join(
            f"{name}={'+'.join(map(str, values))}->{order}"
            for name, values, order in zip(regions["names"], regions["values"], regions["order"], strict=True)))
    prep = card.get("preprocessing") or {}
    if prep:
        lines.append("  preprocessing: " + ", ".join(f"{k}={v}" for k, v in prep.items()))
    if card.get("architecture"):
        lines.append("  network: " + ", ".join(f"{k}={v}" for k, v in card["architecture"].items()))
    if card.get("patch_size"):
        lines.append(f"  patch size: {card['patch_size']}")
    data = card.get("data") or {}
    lines.append("  training data: " + (", ".join(f"{k}={v}" for k, v in data.items()) if data
                                        else "not recorded (checkpoint written before model cards)"))
    metrics = card.get("metrics") or {}
    best = metrics.get("best")
    lines.append(f"  {metrics.get('metric', 'validation')}: " + (f"{best:.4f} at epoch {metrics.get('best_epoch')}"
                                                                 if isinstance(best, (int, float)) else "n/a")
                 + f" ({metrics.get('epochs')} epochs trained)")
    lines.append(f"  command: {card.get('command') or 'not recorded'}")
    if card.get("created"):
        lines.append(f"  created: {card['created']}")
    versions = card.get("versions") or {}
    lines.append("  versions: " + (", ".join(f"{k} {v}" for k, v in versions.items()) or "not recorded"))
    return lines


def export_metadata(checkpoint: Checkpoint, source: str, task: Task) -> dict[str, Any]:
    """What an export of ``task``'s checkpoint carries: everything in the checkpoint but the weights and optimiser
    state, plus the card."""
    kept = {key: value for key, value in checkpoint.items() if key not in ("model", "optimizer", "scaler")}
    kept["labels"] = {str(k): v for k, v in checkpoint.labels.items()}
    kept["colors"] = {str(k): v for k, v in checkpoint.colors.items()}
    card = model_card(checkpoint, task)
    card["labels"] = {str(k): v for k, v in card["labels"].items()}
    card["colors"] = {str(k): v for k, v in card["colors"].items()}
    return {**kept, "card": card, "source": source}
