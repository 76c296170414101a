"""Small real checkpoints and volumes for the explanation tests (not collected: no ``test_`` prefix).

A checkpoint here is what training writes (config, preprocessing, labels, weights), built directly from a
network with random or hand-set weights, so `medseg-attn predict` loads it like any run's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medseg_attn.config import Config
from medseg_attn.networks.factory import build_network
from medseg_attn.segmentation.data.transforms import Preprocessing
from medseg_attn.training.checkpoint import save_checkpoint

LABELS = {0: "background", 1: "shell", 2: "core"}


def write_checkpoint(path: Path, model: dict | None = None, spacing: Sequence[float] | None = (2.0, 2.0, 2.0),
                     patch: Sequence[int] = (32, 32, 32), seed: int = 0, crop_foreground: bool = False,
                     edit=None) -> Path:
    """A segmentation checkpoint of a small network (3 classes, 1 channel, intensities used as they are).

    Args:
        model: ``model`` config keys (default: channels 8/16/32, attention on).
        spacing: the network grid's voxel size (None: each input's own).
        edit: called with the built network before saving (to set weights by hand).
    """
    config = Config().replace(model={"channels": [8, 16, 32], "head_dim": 8, **(model or {})},
                              data={"patch_size": list(patch), "spacing": list(spacing) if spacing else None},
                              inference={"overlap": 0.5, "sw_batch_size": 2})
    prep = Preprocessing(tuple(spacing) if spacing else None, "RAS", "none", (0.0, 1.0), crop_foreground, 3)
    torch.manual_seed(seed)
    network = build_network(config.model, 3, 1, len(LABELS))
    if edit is not None:
        edit(network)
    payload = {"task": "segmentation", "config": config.to_dict(), "labels": LABELS, "preprocessing": prep.to_dict(),
               "in_channels": 1, "model": network.state_dict(), "epoch": 0, "best_metric": None}
    return save_checkpoint(payload, path)


def phantom(shape: Sequence[int]) -> np.ndarray:
    """A bright ellipsoid with a brighter core in a dark volume (float32)."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    radius = np.sqrt((grid ** 2 / np.array([0.7, 0.6, 0.65])[:, None, None, None] ** 2).sum(0))
    volume = np.zeros(tuple(shape), np.float32)
    volume[radius < 1.0] = 1.0
    volume[radius < 0.6] = 2.0
    return volume


def grids(shape: Sequence[int] = (30, 34, 26)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The same phantom stored three ways: RAS 2 mm, LPS 2 mm (first two axes reversed), anisotropic RAS
    1.5 x 1.5 x 4 mm (every other slice)."""
    volume = phantom(shape)
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    ras[:3, 3] = [-30, -34, -26]
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [shape[0] - 1, shape[1] - 1]
    coarse = np.diag([1.5, 1.5, 4.0, 1.0])
    coarse[:3, 3] = [-30, -34, -26]
    fine = phantom((40, 45, 13))
    return {"ras": (volume, ras), "lps": (volume[::-1, ::-1].copy(), ras @ flip), "aniso": (fine, coarse)}


def write_volume(path: Path, volume: np.ndarray, affine: np.ndarray) -> Path:
    image = nib.Nifti1Image(volume.astype(np.float32), affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    nib.save(image, str(path))
    return path


def write_classifier(path: Path, spatial_dims: int = 2, channels: int = 3, image_size: Sequence[int] = (48, 40),
                     attention: bool = True, seed: int = 0) -> Path:
    """A classification checkpoint (3 classes) of a small encoder + head with random weights."""
    from medseg_attn.classification.transforms import ImagePreprocessing
    from medseg_attn.config import ClassifyConfig
    from medseg_attn.networks.factory import build_classifier

    config = ClassifyConfig().replace(model={"channels": [8, 16, 32], "head_dim": 8, "attention": attention},
                                      data={"image_size": list(image_size), "intensity": "zscore"})
    prep = ImagePreprocessing(spatial_dims, channels, tuple(image_size), "zscore")
    torch.manual_seed(seed)
    network = build_classifier(config.model, spatial_dims, channels, 3)
    classes = ["a", "b", "c"]
    payload = {"task": "classification", "config": config.to_dict(), "classes": classes,
               "labels": dict(enumerate(classes)), "preprocessing": prep.to_dict(), "in_channels": channels,
               "segmentation_classes": 0, "model": network.state_dict(), "epoch": 0, "best_metric": None}
    return save_checkpoint(payload, path)
