"""The classification demo dataset: which axial level of the brain an MRI slice shows, from the shipped MNI152 MRI.

Every brain is a new random variant of the real MNI152 2009a T1 template (random affine and elastic deformation,
bias field, contrast, Rician noise: :func:`medseg_attn.demo_data.generate_case`, 2 mm). Its axial slices are
labelled by their height within that brain's own superior-inferior extent (the first and last slice holding
grey or white matter), cut into ten equal bands. A band is named by what a slice at its centre shows in the
template (approximately: brains differ in shape and the slices are oblique by up to 10 degrees):

=========================  =======  ===================================================================
class                      height   a slice at the band's centre shows
=========================  =======  ===================================================================
``01_medulla``             0-10 %   medulla and the cerebellar tonsils
``02_cerebellum``          10-20 %  cerebellar hemispheres, temporal poles
``03_pons``                20-30 %  pons, cerebellum, temporal lobes
``04_midbrain``            30-40 %  midbrain, top of the cerebellum, temporal lobes
``05_thalamus``            40-50 %  thalamus, basal ganglia, third ventricle
``06_lateral_ventricles``  50-60 %  frontal horns of the lateral ventricles, caudate heads
``07_corona_radiata``      60-70 %  bodies of the lateral ventricles, corona radiata
``08_centrum_semiovale``   70-80 %  the white matter above the ventricles
``09_high_convexity``      80-90 %  upper frontal and parietal lobes
``10_vertex``              90-100 % the top of the brain
=========================  =======  ===================================================================

Neighbouring levels are 10 % of the brain's height (about 15 mm) apart, so the task is not trivial: a slice
near a band boundary looks much like its neighbour's. Slices within 2 % of a band boundary (ambiguous) and the
outermost 2 % (almost empty) are not used. Slices are
written as 16-bit grayscale PNGs (the MRI's own values, anterior up) in a split layout:
``train/<class>/``, ``val/<class>/`` and ``test/<class>/`` from disjoint sets of random brains, so validation and
test brains are never seen in training.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from medseg_attn.demo_data import LICENCE, REFERENCE, generate_case
from medseg_attn.errors import UserError
from medseg_attn.io.files import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["CLASSES", "build_slice_dataset", "slice_classes"]

CLASSES = ("01_medulla", "02_cerebellum", "03_pons", "04_midbrain", "05_thalamus", "06_lateral_ventricles",
           "07_corona_radiata", "08_centrum_semiovale", "09_high_convexity", "10_vertex")
MARGIN = 0.02  # fraction of the brain's height kept clear of band boundaries and of its two ends
SEED_OFFSETS = {"train": 0, "val": 20_000, "test": 30_000}  # brains of different splits never share a seed


def slice_classes(label: np.ndarray) -> dict[int, int]:
    """Axial slice index -> class index for one brain's label map (X, Y, Z) (unambiguous slices only)."""
    heights = np.flatnonzero((label > 0).any(axis=(0, 1)))
    if heights.size < 10:
        raise UserError(f"label map of shape {label.shape} holds too little brain to cut into levels")
    low, high = int(heights[0]), int(heights[-1])
    out = {}
    for z in range(low, high + 1):
        fraction = (z - low) / (high - low)
        band = min(int(fraction * len(CLASSES)), len(CLASSES) - 1)
        edge = min(abs(fraction - band / len(CLASSES)), abs(fraction - (band + 1) / len(CLASSES)))
        if edge >= MARGIN:
            out[z] = band
    return out


def _save_png(picture: np.ndarray, path: Path) -> None:
    from PIL import Image

    array = np.clip(picture, 0, 65535).astype(np.uint16)
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def build_slice_dataset(
    output_dir: str | Path,
    train_cases: int = 30,
    val_cases: int = 6,
    test_cases: int = 10,
    slices_per_class: int = 2,
    seed: int = 0,
    spacing: float = 2.0,
    progress: bool = True,
) -> Path:
    """Write the brain-level ImageFolder dataset into ``output_dir`` (``train/``, ``val/``, ``test/``).

    Args:
        output_dir: folder to create or fill.
        train_cases, val_cases, test_cases: random brains per split.
        slices_per_class: axial slices drawn per brain and class (at random among the unambiguous ones).
        seed: base random seed (brain ``i`` of a split uses ``seed + offset + i``).
        spacing: voxel size of the generated brains in mm (2 mm gives 77 x 95 slices).
        progress: show a progress bar.

    Returns:
        The dataset folder (holding ``classes.json`` with the description, written last).

    Raises:
        ValueError: a count or seed out of range, or ``output_dir`` is a file.
    """
    for name, value in (("train_cases", train_cases), ("val_cases", val_cases), ("test_cases", test_cases),
                        ("slices_per_class", slices_per_class), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10_000:
            raise UserError(f"{name}={value!r}: expected an integer between 0 and 10000")
    if train_cases < 1 or slices_per_class < 1:
        raise UserError("train_cases and slices_per_class must be at least 1")
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: exists and is not a folder")
    from tqdm.auto import tqdm

    plan = [(split, i) for split, count in (("train", train_cases), ("val", val_cases), ("test", test_cases))
            for i in range(count)]
    started = time.perf_counter()
    counts = {split: [0] * len(CLASSES) for split in SEED_OFFSETS}
    for split, index in tqdm(plan, desc="brains", unit="brain", disable=not progress):
        case_seed = seed + SEED_OFFSETS[split] + index
        case = generate_case(case_seed, spacing)
        levels = slice_classes(case.label)
        rng = np.random.default_rng(case_seed)
        for band, name in enumerate(CLASSES):
            candidates = sorted(z for z, b in levels.items() if b == band)
            chosen = rng.choice(candidates, size=min(slices_per_class, len(candidates)), replace=False)
            for z in sorted(int(v) for v in chosen):
                picture = np.rot90(case.image[:, :, z])  # (Y, X): anterior up, as radiologists view it
                _save_png(picture, root / split / name / f"brain{case_seed:05d}_z{z:02d}.png")
                counts[split][band] += 1
    description = {
        "name": "MNI152 axial brain levels",
        "task": "which axial level of the brain a T1-weighted MRI slice shows",
        "classes": list(CLASSES),
        "images": {split: dict(zip(CLASSES, values, strict=True)) for split, values in counts.items()},
        "generation": {"train_cases": train_cases, "val_cases": val_cases, "test_cases": test_cases,
                       "slices_per_class": slices_per_class, "seed": seed, "spacing_mm": spacing,
                       "margin": MARGIN},
        "reference": REFERENCE,
        "licence": LICENCE,
    }
    atomic_write_text(root / "classes.json", json.dumps(description, indent=2) + "\n")
    logger.info("classification demo dataset written to %s in %.1f s (%s)", root, time.perf_counter() - started,
                {split: sum(v) for split, v in counts.items()})
    return root
