"""Regenerate the packaged MNI152 demo template from ``../shared/data/mni152_2009a``.

Crops the ICBM152 2009a symmetric T1 (skull-stripped), GM and WM maps to one bounding box of the
brain (T1 > 0 or GM/WM > 0, plus a small margin), keeps uint8 values and the 1 mm grid, and fixes the
affine so that the crop keeps its world position. Writes ``medseg_attn/resources/mni152_{t1,gm,wm}.nii.xz`` and
``mni152_NOTICE.txt``.

Storage (lossless): plain NIfTI-1 files compressed with xz (LZMA), with the voxel axes stored in reversed order
(S, A, R: left-right is the slowest axis; the affine's columns are permuted to match, so every voxel keeps its
world position). The 2009a template is exactly left-right symmetric, so with left-right slowest the second half
of the file repeats sagittal slices of the first, which LZMA's large window finds: 2.1 MB for all three maps,
against 4.2 MB for RAS order in xz and 5.0 MB in gzip. ``medseg_attn.demo_data.load_template`` decompresses
in memory and reorients to RAS; ``xz -dk mni152_t1.nii.xz`` gives a ``.nii`` that any viewer opens.
``--format gz`` writes ordinary RAS ``.nii.gz`` files instead (the loader reads either).

Usage:
    python scripts/make_demo_resources.py [--source DIR] [--margin 3]
"""

from __future__ import annotations

import argparse
import logging
import lzma
from pathlib import Path

import nibabel as nib
import numpy as np

logger = logging.getLogger("make_demo_resources")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "mni152_2009a"
DESTINATION = REPO_ROOT / "medseg_attn" / "resources"
SOURCE_NAMES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

NOTICE = """\
MNI ICBM152 non-linear symmetric 2009a template (T1, grey matter and white matter probability maps)

Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute,
McGill University. Permission to use, copy, modify, and distribute this software and its documentation for
any purpose and without fee is hereby granted, provided that the above copyright notice appear in all
copies. The authors and McGill University make no representations about the suitability of this software
for any purpose. It is provided "as is" without express or implied warranty. The authors are not
responsible for any data loss, equipment damage, property loss, or injury to subjects or patients resulting
from the use or misuse of this software package.

Reference: V.S. Fonov, A.C. Evans, R.C. McKinstry, C.R. Almli, D.L. Collins, "Unbiased nonlinear average
age-appropriate brain templates from birth to adulthood", NeuroImage 47 (2009) S102; V. Fonov et al.,
"Unbiased average age-appropriate atlases for pediatric studies", NeuroImage 54 (2011) 313-327.
Source: http://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009 (files as converted and shipped in
the nilearn distribution).

Changes made for medseg-attn: the files
{changes}
were cropped to the common bounding box of the brain (T1 > 0 or GM/WM > 0, plus {margin} voxels margin,
clipped to the volume): voxel ranges {ranges} of the original {shape} grid.
Values (uint8, probabilities scaled to 0..255), the 1 mm grid and the world position (affine adjusted for
the crop) are unchanged.{storage}
"""


def crop_box(volumes: list[np.ndarray], margin: int) -> tuple[slice, ...]:
    """Bounding box (slices) of the voxels that are non-zero in any volume, widened by ``margin``."""
    mask = np.zeros(volumes[0].shape, dtype=bool)
    for volume in volumes:
        mask |= volume > 0
    if not mask.any():
        raise ValueError("the template volumes are all zero; nothing to crop")
    indices = np.argwhere(mask)
    low = np.maximum(indices.min(axis=0) - margin, 0)
    high = np.minimum(indices.max(axis=0) + 1 + margin, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))


def _nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    image = nib.Nifti1Image(np.asarray(data, dtype=np.uint8), affine)
    image.header.set_data_dtype(np.uint8)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=4)  # MNI152 space
    return image


def write_volume(data: np.ndarray, affine: np.ndarray, destination: Path, key: str, fmt: str) -> Path:
    """Write one cropped RAS volume as ``mni152_{key}.nii.xz`` (reversed axes) or ``.nii.gz`` (RAS)."""
    if fmt == "gz":
        path = destination / f"mni152_{key}.nii.gz"
        nib.save(_nifti(data, affine), str(path))
        return path
    # reversed axis order: array axes (z, y, x), affine columns permuted to match
    image = _nifti(data.transpose(2, 1, 0), affine[:, [2, 1, 0, 3]])
    path = destination / f"mni152_{key}.nii.xz"
    tmp = path.with_name(f".{path.name}.tmp")
    # xz output is deterministic for the same bytes, so regenerating gives identical files
    tmp.write_bytes(lzma.compress(image.to_bytes(), preset=9 | lzma.PRESET_EXTREME))
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder with the MNI152 2009a files")
    parser.add_argument("--destination", type=Path, default=DESTINATION, help="package resources folder")
    parser.add_argument("--margin", type=int, default=3, help="voxels of margin around the brain")
    parser.add_argument("--format", choices=("xz", "gz"), default="xz", help="xz (small, default) or gz (plain RAS)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    images = {}
    for key, name in SOURCE_NAMES.items():
        path = args.source / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: MNI152 2009a file not found (pass --source)")
        images[key] = nib.load(str(path))
    shapes = {image.shape for image in images.values()}
    if len(shapes) != 1 or not all(np.allclose(image.affine, images["t1"].affine) for image in images.values()):
        raise ValueError(f"{args.source}: T1, GM and WM maps do not share one grid ({shapes})")
    arrays = {key: np.asanyarray(image.dataobj) for key, image in images.items()}
    box = crop_box(list(arrays.values()), args.margin)
    logger.info("crop %s of %s", [(s.start, s.stop) for s in box], images["t1"].shape)

    args.destination.mkdir(parents=True, exist_ok=True)
    for key, image in images.items():
        cropped = image.slicer[box]
        data = np.asarray(cropped.dataobj, dtype=np.uint8)
        path = write_volume(data, cropped.affine, args.destination, key, args.format)
        logger.info("%s: %s, %.2f MB", path.name, data.shape, path.stat().st_size / 1e6)
    changes = "\n".join(f"  {name} -> mni152_{key}.nii.{args.format}" for key, name in SOURCE_NAMES.items())
    ranges = "x {}:{}, y {}:{}, z {}:{}".format(*[v for s in box for v in (s.start, s.stop)])
    storage = ""
    if args.format == "xz":
        storage = (
            "\nThe NIfTI files are compressed with xz instead of gzip and store their voxel axes in reversed order\n"
            "(S, A, R; the affine says so): lossless, `xz -dk FILE.nii.xz` gives FILE.nii for any viewer."
        )
    shape = "x".join(map(str, images["t1"].shape))
    notice = NOTICE.format(storage=storage, changes=changes, margin=args.margin, ranges=ranges, shape=shape)
    (args.destination / "mni152_NOTICE.txt").write_text(notice)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
