"""Segmentation as a :class:`~medseg_attn.task.Task`: its name, config, network, card metric and export.

Its commands are :mod:`medseg_attn.cli.segmentation`'s (listed beside it in :mod:`medseg_attn.registry`). The
network and export code load on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medseg_attn.config import Config
from medseg_attn.task import Task

__all__ = ["TASK", "network_from_checkpoint"]


def network_from_checkpoint(payload: Mapping[str, Any]) -> Any:
    """The network of a segmentation checkpoint payload (CPU, weights loaded, eval mode).

    Raises:
        KeyError, TypeError, RuntimeError: a payload this version cannot rebuild (see ``Task.network``).
    """
    from medseg_attn.config import from_dict
    from medseg_attn.networks.factory import build_network
    from medseg_attn.segmentation.data.transforms import Preprocessing

    config = from_dict(payload["config"])
    prep = Preprocessing.from_dict(payload["preprocessing"])
    regions = payload.get("regions")  # a region model: one output per region, not per class
    outputs = len(regions["names"]) if regions else len(payload["labels"])
    network = build_network(config.model, prep.spatial_dims, int(payload["in_channels"]), outputs)
    network.load_state_dict(payload["model"])
    return network.eval()


TASK = Task(
    name="segmentation", config=Config, network_from_checkpoint=network_from_checkpoint,
    card_metric=lambda payload: "validation Dice (mean over classes)",
    export="medseg_attn.segmentation.export.models:export_segmentation",
    untagged=True,  # checkpoints older than the "task" key are segmentation's
)
