"""The lesion demo dataset: two-channel brain MRI (T1-like and FLAIR-like) with synthetic white-matter lesions, in
the nnU-Net v2 layout with nested regions (white matter including lesions ⊃ lesions).

Each case starts from a random deformation of the shipped MNI152 template (:mod:`medseg_attn.demo_data`: the same
affine + elastic deformation). Lesions are drawn inside the white matter, the way multiple-sclerosis plaques sit:

1. count: 1 to 10 per case (uniform); size: an equivalent radius drawn log-uniformly between 2 and 8 mm, so most
   lesions are small and a few are large; shape: an ellipsoid (axes 0.7-1.3 x the radius) whose edge is roughened
   by a smooth random field; centre: a white-matter voxel at least half the radius from the white matter's edge;
2. a lesion keeps only its white-matter voxels (white-matter probability above 0.3);
3. contrasts from the tissue maps: T1-like = the template's T1 with lesions 40 % darker; FLAIR-like = grey matter
   brighter than white matter, CSF dark, lesions brightest; each channel gets its own bias field, gamma, scale and
   Rician noise (:func:`medseg_attn.demo_data.mri_appearance`).

Labels: 0 background, 1 grey matter, 2 white matter (normal-appearing), 3 lesion; dataset.json declares the regions
``white_matter = [2, 3]`` and ``lesion = 3`` with ``regions_class_order [1, 2, 3]`` (nnU-Net v2's convention, see
:mod:`medseg_attn.segmentation.measures.regions`), and names ``lesion`` among its ``lesion_structures``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from medseg_attn.demo_data import (
    LICENCE,
    REFERENCE,
    TEST_SEED_OFFSET,
    _smooth_random_field,
    _uniform,
    check_build_arguments,
    deformed_template,
    mri_appearance,
    tissue_label,
)
from medseg_attn.io.files import atomic_write_text
from medseg_attn.io.nifti import write_nifti

logger = logging.getLogger(__name__)

__all__ = ["LESION_LABELS", "LesionCase", "build_lesion_dataset", "generate_lesion_case"]

LESION_LABELS = {"background": 0, "grey_matter": 1, "white_matter": [2, 3], "lesion": 3}
REGIONS_CLASS_ORDER = [1, 2, 3]
CHANNELS = ("T1", "FLAIR")
LESION_COUNT = (1, 10)
LESION_RADIUS_MM = (2.0, 8.0)  # equivalent radius, log-uniform
T1_LESION_DARKENING = 0.4
FLAIR_TISSUE = {"grey_matter": 0.75, "white_matter": 0.55, "csf": 0.08, "lesion": 1.0}


@dataclass
class LesionCase:
    """One case: ``images`` (2, X, Y, Z) int16 (T1-like, FLAIR-like), ``label`` uint8 0..3, RAS ``affine``, and
    the number of lesions drawn (some may merge into one connected component)."""

    images: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    lesions: int
    seed: int


def _lesions(generator: torch.Generator, label: torch.Tensor, wm: torch.Tensor, spacing: float
             ) -> tuple[torch.Tensor, int]:
    """A boolean lesion mask (X, Y, Z) inside the white matter, and how many lesions were drawn."""
    shape = tuple(label.shape)
    white = label.numpy() == 2
    depth = ndimage.distance_transform_edt(white, sampling=spacing)  # mm to the white matter's edge
    count = int(torch.randint(LESION_COUNT[0], LESION_COUNT[1] + 1, (1,), generator=generator))
    low, high = (math.log(r) for r in LESION_RADIUS_MM)
    axes = [torch.arange(n, dtype=torch.float32) * spacing for n in shape]
    rough = _smooth_random_field(generator, 1, 6, shape)[0]  # (X, Y, Z), about -1..1
    mask = torch.zeros(shape, dtype=torch.bool)
    drawn = 0
    for _ in range(count):
        radius = math.exp(float(_uniform(generator, low, high)))
        candidates = np.flatnonzero(depth >= max(spacing, radius / 2))
        if not len(candidates):
            continue
        centre = np.unravel_index(candidates[int(torch.randint(len(candidates), (1,), generator=generator))], shape)
        stretch = _uniform(generator, 0.7, 1.3, (3,)) * radius
        distance = sum(((axes[a] - float(centre[a]) * spacing) / float(stretch[a])).reshape(
            [-1 if b == a else 1 for b in range(3)]) ** 2 for a in range(3))
        mask |= distance <= 1.0 + 0.3 * rough
        drawn += 1
    return mask & (wm > 0.3), drawn


def generate_lesion_case(seed: int, spacing: float, deform: bool = True) -> LesionCase:
    """One random two-channel case with white-matter lesions on the isotropic ``spacing`` mm grid (same seed and
    spacing: same case)."""
    generator = torch.Generator().manual_seed(int(seed))
    t1, gm, wm, affine = deformed_template(generator, spacing, deform)
    label = tissue_label(gm, wm)
    lesion, drawn = _lesions(generator, label, wm, spacing)
    label = label.masked_fill(lesion, 3)
    soft = torch.from_numpy(ndimage.gaussian_filter(lesion.numpy().astype(np.float32), 0.5))  # partial volume
    brain = label > 0
    t1 = t1.clamp(0, 1) * (1.0 - T1_LESION_DARKENING * soft)
    csf = (1.0 - gm - wm).clamp(0, 1) * (t1 > 0.05)
    flair = FLAIR_TISSUE["grey_matter"] * gm + FLAIR_TISSUE["white_matter"] * wm + FLAIR_TISSUE["csf"] * csf
    flair = flair * (1.0 - soft) + FLAIR_TISSUE["lesion"] * soft
    images = [mri_appearance(generator, contrast, brain) for contrast in (t1, flair)]
    stacked = torch.stack(images).round().clamp(0, np.iinfo(np.int16).max).to(torch.int16)
    return LesionCase(stacked.numpy(), label.numpy(), affine, drawn, int(seed))


def build_lesion_dataset(output_dir: str | Path, train_cases: int = 20, test_cases: int = 4, seed: int = 0,
                         train_spacing: float = 2.0, test_spacing: float = 2.0, progress: bool = True) -> Path:
    """Write the lesion demo dataset (nnU-Net v2 layout with regions) into ``output_dir``.

    Layout: ``imagesTr/lesion_000_0000.nii.gz`` (T1-like) and ``..._0001.nii.gz`` (FLAIR-like) +
    ``labelsTr/lesion_000.nii.gz``; held-out cases likewise in imagesTs/labelsTs; ``dataset.json`` (written last)
    with ``channel_names``, region ``labels``, ``regions_class_order`` and ``lesion_structures``. Training case
    ``i`` uses seed ``seed + i``, held-out case ``j`` seed ``seed + 10000 + j``.

    Returns:
        Path of the written ``dataset.json``.

    Raises:
        UserError: a count, seed or spacing out of range; ``output_dir`` is a file.
    """
    root = check_build_arguments(output_dir, train_cases, test_cases, seed, train_spacing, test_spacing, "lesion")
    from tqdm.auto import tqdm

    start = time.perf_counter()
    first_test = max(100, int(math.ceil(train_cases / 100)) * 100)
    plan = [("Tr", i, seed + i, float(train_spacing)) for i in range(train_cases)]
    plan += [("Ts", first_test + j, seed + TEST_SEED_OFFSET + j, float(test_spacing)) for j in range(test_cases)]
    lesions = []
    for split, case_id, case_seed, spacing in tqdm(plan, desc="lesion cases", unit="case", disable=not progress):
        name = f"lesion_{case_id:03d}"
        case = generate_lesion_case(case_seed, spacing)
        for channel, image in enumerate(case.images):
            write_nifti(image, affine=case.affine, path=root / f"images{split}" / f"{name}_{channel:04d}.nii.gz")
        write_nifti(case.label, affine=case.affine, path=root / f"labels{split}" / f"{name}.nii.gz")
        lesions.append(case.lesions)
    dataset = {
        "name": "MNI152Lesions",
        "description": (
            "White-matter lesion segmentation on two-channel brain MRI (T1-like, FLAIR-like): random deformations of "
            "the MNI ICBM152 2009a template with synthetic lesions (1-10 per case, 2-8 mm radius), bias field, "
            f"contrast change and Rician noise. Training cases at {train_spacing:g} mm, held-out at "
            f"{test_spacing:g} mm (labels in labelsTs). Built by medseg_attn.lesion_data with seed {seed}."),
        "reference": REFERENCE,
        "licence": LICENCE,
        "channel_names": {str(i): name for i, name in enumerate(CHANNELS)},
        "labels": LESION_LABELS,
        "regions_class_order": REGIONS_CLASS_ORDER,
        "lesion_structures": ["lesion"],
        "numTraining": train_cases,
        "numTest": test_cases,
        "file_ending": ".nii.gz",
    }
    path = root / "dataset.json"
    atomic_write_text(path, json.dumps(dataset, indent=2) + "\n")
    logger.info("lesion dataset written to %s in %.1f s (%d lesions drawn)", path, time.perf_counter() - start,
                sum(lesions))
    return path
