"""Checkpoints written before an option existed load with the behaviour they were trained with."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, asdict

import pytest

from medseg_attn.config import Config, from_dict
from medseg_attn.networks.factory import build_network
from medseg_attn.networks.unet import SkipAttention
from medseg_attn.training.checkpoint import load_checkpoint, save_checkpoint


def _pools(config: Config) -> list[int]:
    network = build_network(config.model, 3, 1, 3)
    return [m.pool for m in network.modules() if isinstance(m, SkipAttention)]


def test_checkpoint_without_attention_pool_attends_voxel_by_voxel(tmp_path):
    saved = asdict(Config())
    assert list(saved["model"]["attention_pool"]) == [4, 2]
    assert _pools(from_dict(saved)) == [4, 2, 1, 1]  # today's default: the two finest levels pooled
    del saved["model"]["attention_pool"]  # what a checkpoint from before the option holds
    path = save_checkpoint({"config": saved, "model": {}}, tmp_path / "old.pt")
    config = from_dict(load_checkpoint(path)["config"])
    assert config.model.attention_pool == ()
    assert _pools(config) == [1, 1, 1, 1]
    # a checkpoint that names the option keeps it
    saved["model"]["attention_pool"] = [2]
    config = from_dict(load_checkpoint(save_checkpoint({"config": saved}, tmp_path / "new.pt"))["config"])
    assert _pools(config) == [2, 1, 1, 1]


def test_a_loaded_checkpoint_reads_as_typed_attributes(tmp_path):
    path = save_checkpoint({"model": {}, "epoch": 3, "labels": {0: "background", "1": "liver"}, "features": 2},
                           tmp_path / "c.pt")
    checkpoint = load_checkpoint(path)
    assert (checkpoint.format, checkpoint.version, checkpoint.epoch) == ("medseg-attn-checkpoint", 1, 3)
    assert checkpoint.labels == {0: "background", 1: "liver"}  # int indices, whatever was saved
    assert checkpoint.task is None and checkpoint.calibration == {} and checkpoint.config == {}  # older keys absent
    assert checkpoint["features"] == 2 and dict(checkpoint)["epoch"] == 3  # a task's own keys; a dict to save again
    with pytest.raises(FrozenInstanceError):
        checkpoint.saved = {}
