"""Classification as a :class:`~medseg_attn.task.Task`: its name, config, network, card metric and export.

Its commands are :mod:`medseg_attn.cli.classification`'s (listed beside it in :mod:`medseg_attn.registry`). The
network and export code load on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medseg_attn.config import ClassifyConfig
from medseg_attn.task import Task

__all__ = ["NAME", "TASK", "network_from_checkpoint"]

NAME = "classification"  # the checkpoint's "task" tag


def network_from_checkpoint(payload: Mapping[str, Any]) -> Any:
    """The classifier of a classification checkpoint payload (CPU, weights loaded, eval mode).

    Raises:
        KeyError, TypeError, RuntimeError: a payload this version cannot rebuild (see ``Task.network``).
    """
    from medseg_attn.classification.transforms import ImagePreprocessing
    from medseg_attn.config import from_dict
    from medseg_attn.networks.factory import build_classifier

    config = from_dict(payload["config"], ClassifyConfig)
    prep = ImagePreprocessing.from_dict(payload["preprocessing"])
    network = build_classifier(config.model, prep.spatial_dims, prep.channels, len(payload["classes"]),
                               int(payload.get("segmentation_classes", 0)))
    network.load_state_dict(payload["model"])
    return network.eval()


def _card_metric(payload: Mapping[str, Any]) -> str:
    return f"validation {(payload.get('config') or {}).get('train', {}).get('monitor', 'metric')}"


TASK = Task(name=NAME, config=ClassifyConfig, network_from_checkpoint=network_from_checkpoint,
            card_metric=_card_metric, export="medseg_attn.classification.export:export_classifier")
