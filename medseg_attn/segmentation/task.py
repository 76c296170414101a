"""Segmentation as a :class:`~medseg_attn.task.Task`: its name, config, network, card metric and export.

Its commands are :mod:`medseg_attn.cli.segmentation`'s (listed beside it in :mod:`medseg_attn.registry`). The
network and export code load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medseg_attn.config import Config
from medseg_attn.task import Task

if TYPE_CHECKING:
    from medseg_attn.training.checkpoint import Checkpoint

__all__ = ["TASK", "network_from_checkpoint"]


def network_from_checkpoint(checkpoint: Checkpoint) -> Any:
    """The network of a segmentation checkpoint (CPU, weights loaded, eval mode).

    Raises:
        KeyError, TypeError, RuntimeError: a checkpoint this version cannot rebuild (see ``Task.network``).
    """
    from medseg_attn.config import from_dict
    from medseg_attn.networks.factory import build_network
    from medseg_attn.segmentation.data.transforms import Preprocessing

    config = from_dict(checkpoint.config)
    prep = Preprocessing.from_dict(checkpoint.preprocessing)
    regions = checkpoint.regions  # a region model: one output per region, not per class
    outputs = len(regions["names"]) if regions else len(checkpoint.labels)
    network = build_network(config.model, prep.spatial_dims, int(checkpoint.in_channels), outputs)
    network.load_state_dict(checkpoint.model)
    return network.eval()


TASK = Task(
    name="segmentation", config=Config, network_from_checkpoint=network_from_checkpoint,
    card_metric=lambda checkpoint: "validation Dice (mean over classes)",
    export="medseg_attn.segmentation.export.models:export_segmentation",
    untagged=True,  # checkpoints older than the "task" key are segmentation's
)
