"""Fixtures of the reliability suite: tiny real checkpoints (untrained: predictions are arbitrary; files, geometry
and error handling are real)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from medseg_attn.config import ClassifyConfig, load_config
from medseg_attn.networks.factory import build_classifier, build_network
from medseg_attn.segmentation.data.transforms import Preprocessing
from medseg_attn.training.checkpoint import save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # cli_helpers, dicom_factory
sys.path.insert(0, str(Path(__file__).resolve().parent))  # reliability_helpers


@pytest.fixture(scope="session")
def segmentation_model(tmp_path_factory) -> Path:
    """A tiny untrained segmentation network (model.channels [4, 8], 16^3 patches) in a real checkpoint."""
    config = load_config(None, ["model.channels=[4,8]", "data.patch_size=[16,16,16]", "inference.overlap=0"])
    prep = Preprocessing((3.0, 3.0, 3.0), "RAS", "zscore", (0, 1), False, 3)
    path = tmp_path_factory.mktemp("segmentation_model") / "tiny.pt"
    save_checkpoint({"model": build_network(config.model, 3, 1, 3).state_dict(), "config": config.to_dict(),
                     "epoch": 0, "labels": {0: "background", 1: "liver", 2: "spleen"},
                     "preprocessing": prep.to_dict(), "in_channels": 1}, path)
    return path


@pytest.fixture(scope="session")
def classifier_model(tmp_path_factory) -> Path:
    """A tiny untrained 2D grayscale classifier (two classes, 16x16 pictures) in a real checkpoint."""
    config = load_config(None, ["model.channels=[8,16]", "data.image_size=[16,16]"], kind=ClassifyConfig)
    network = build_classifier(config.model, 2, 1, 2)
    prep = {"spatial_dims": 2, "channels": 1, "image_size": [16, 16], "intensity": "zscore",
            "ct_window": [-1000.0, 1000.0], "resized": True}
    path = tmp_path_factory.mktemp("classifier_model") / "classifier.pt"
    save_checkpoint({"task": "classification", "model": network.state_dict(), "config": config.to_dict(),
                     "classes": ["dark", "light"], "preprocessing": prep, "epoch": 0}, path)
    return path


