"""RTSTRUCT training labels: a dataset.json ``label`` naming an RT Structure Set beside the case's DICOM series is
rasterised once onto that series' grid (:func:`~medseg_attn.io.rtstruct_read.rtstruct_label_map`) into a NIfTI label
map kept in the cache, so plan, preprocess, train and evaluate read an ordinary label map."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medseg_attn.errors import UserError
from medseg_attn.io import dicom
from medseg_attn.io.formats import DICOM, format_of
from medseg_attn.io.nifti import write_nifti
from medseg_attn.io.rtstruct_read import is_rtstruct, rtstruct_label_map
from medseg_attn.io.volumes import read_geometry
from medseg_attn.segmentation.data.cache import cache_folder, cache_root, entry_key
from medseg_attn.segmentation.measures.regions import Regions

logger = logging.getLogger(__name__)

__all__ = ["rasterise_rtstruct_labels"]


def rasterise_rtstruct_labels(training: list[dict[str, Any]], labels: dict[int, str],
                              regions: Regions | None = None, cache_dir: str | None = None) -> None:
    """Replace each training case's RTSTRUCT label by a NIfTI label map of it on its image series' grid, made once
    and kept in the cache (``CACHE/rtstruct/<case>-<key>.nii.gz``, keyed by the content of both and by the classes).

    ROIs are matched to dataset.json's classes by name (regions: to the regions, painted in regions_class_order
    order; :func:`~medseg_attn.io.rtstruct_read.rtstruct_label_map`), so every later step reads an ordinary label map.

    Raises:
        UserError: the case's image is not one DICOM series, or the RTSTRUCT does not fit it (another series,
            contours outside the image, an ROI matching no class, overlapping ROIs of plain classes).
    """
    cases = [case for case in training if Path(case["label"]).is_file() and format_of(case["label"]) is DICOM]
    if not cases:
        return
    folder = None
    for case in cases:
        label = Path(case["label"])
        if not is_rtstruct(label):
            continue
        images = case["image"] if isinstance(case["image"], (list, tuple)) else [case["image"]]
        if len(images) != 1 or format_of(images[0]) is not DICOM:
            raise UserError(f"{label}: an RTSTRUCT label needs its image to be the one DICOM series it was drawn on "
                            f"(a series folder), not {', '.join(str(i) for i in images)}")
        folder = folder or cache_folder(cache_root(cache_dir), "rtstruct")
        key = entry_key(case, ("image", "label"), labels=labels, regions=regions.to_dict() if regions else None)
        target = folder / f"{case['case']}-{key}.nii.gz"
        if not target.is_file():
            series = dicom.select_series(images[0], keep_headers=True)
            array = rtstruct_label_map(label, series, labels, regions)
            write_nifti(array, target, affine=read_geometry(images[0], series=series).affine,
                        description="labels from an RTSTRUCT")
            logger.info("%s: RTSTRUCT rasterised onto %s -> %s", label, images[0], target)
        case["label"] = target
