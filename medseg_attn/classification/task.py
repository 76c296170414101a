"""Classification as a :class:`~medseg_attn.task.Task`: its name, config, network, card metric and export.

Its commands are :mod:`medseg_attn.cli.classification`'s (listed beside it in :mod:`medseg_attn.registry`). The
network and export code load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medseg_attn.config import ClassifyConfig
from medseg_attn.task import Task

if TYPE_CHECKING:
    from medseg_attn.training.checkpoint import Checkpoint

__all__ = ["NAME", "TASK", "network_from_checkpoint"]

NAME = "classification"  # the checkpoint's "task" tag


def network_from_checkpoint(checkpoint: Checkpoint) -> Any:
    """The classifier of a classification checkpoint (CPU, weights loaded, eval mode).

    Raises:
        KeyError, TypeError, RuntimeError: a checkpoint this version cannot rebuild (see ``Task.network``).
    """
    from medseg_attn.classification.transforms import ImagePreprocessing
    from medseg_attn.config import from_dict
    from medseg_attn.networks.factory import build_classifier

    config = from_dict(checkpoint.config, ClassifyConfig)
    prep = ImagePreprocessing.from_dict(checkpoint.preprocessing)
    network = build_classifier(config.model, prep.spatial_dims, prep.channels, len(checkpoint.classes),
                               checkpoint.segmentation_classes)
    network.load_state_dict(checkpoint.model)
    return network.eval()


def _card_metric(checkpoint: Checkpoint) -> str:
    return f"validation {checkpoint.config.get('train', {}).get('monitor', 'metric')}"


TASK = Task(name=NAME, config=ClassifyConfig, network_from_checkpoint=network_from_checkpoint,
            card_metric=_card_metric, export="medseg_attn.classification.export:export_classifier")
