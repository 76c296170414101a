"""A tiny labelled NIfTI dataset (balls and boxes in noise) and a tiny training config, for fast real runs."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from medseg_attn.config import load_config


def write_blob_dataset(root, cases=6, labels=None, patients=None, size=24, seed=0):
    """Tiny real NIfTI cases (2 mm voxels): a bright ball (class 1) and a dim box (class 2) in noise."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    grid = np.indices((size,) * 3)
    training = []
    for i in range(cases):
        centre = rng.integers(7, size - 7, 3)
        ball = ((grid - centre[:, None, None, None]) ** 2).sum(0) < rng.integers(9, 25)
        label = np.zeros((size,) * 3, np.uint8)
        label[2:7, 2:7, 2:7] = 2
        label[ball] = 1
        image = rng.normal(0, 0.3, label.shape) + (label == 1) * 2.0 + (label == 2) * 1.0 + 0.5
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), root / "imagesTr" / f"case_{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"case_{i}.nii.gz")
        entry = {"image": f"imagesTr/case_{i}.nii.gz", "label": f"labelsTr/case_{i}.nii.gz"}
        if patients:
            entry["patient"] = patients[i]
        training.append(entry)
    spec = {"name": "blobs", "modality": {"0": "MR"}, "training": training,
            "labels": labels or {"0": "background", "1": "ball", "2": "box"}}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root / "dataset.json"


TINY = ["data.spacing=[2,2,2]", "data.patch_size=[16,16,16]", "data.samples_per_case=1", "model.channels=[4,8,16]",
        "train.steps_per_epoch=2", "train.batch_size=2", "train.val_interval=1", "train.warmup_steps=0",
        "data.augmentation.enabled=false", "train.log_images=false", "inference.sw_batch_size=2"]


def tiny_config(dataset, *extra):
    return load_config(overrides=[f"data.dataset={dataset}", *TINY, *extra])
