"""Training and validation read from the disk cache by memory map (``data.cache: disk``).

A training visit maps the case's ``image.npy`` and ``label.npy`` (``numpy.load(mmap_mode="c")``: pages are read
from the file when a patch touches them, nothing is ever written back) and loads its class locations; the patch
crop then reads only the pages under the patches, and the mapping is released with the item. Memory is bounded
by the loader's working set (the patches of a batch and the pages they touch), not by the number of cases.

The transforms after the cached step are the very objects of the in-memory chain (the same random transforms in
the same order, seeded the same way), so a run draws the same batches from the disk cache as from memory.
Validation maps one case at a time the same way. Entries are checked when a run starts
(:func:`~medseg_attn.segmentation.data.cache.entry_problem`); a file damaged later is one line naming it and the
cache folder.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from monai.data import Dataset

from medseg_attn.errors import UserError
from medseg_attn.segmentation.data.transforms import Preprocessing, training_augmentation

__all__ = ["LoadCachedCased", "disk_datasets"]


def _damaged(path: Path, error: Exception) -> UserError:
    return UserError(f"{path}: damaged cache entry ({type(error).__name__}: {error}); run again to rebuild it (every "
                     f"run checks its entries first), or remove the cache {path.parent.parent.parent}")


def _mapped(path: Path) -> torch.Tensor:
    # "c" (copy-on-write) rather than "r": torch wraps a writable array without a copy or a warning; pages are
    # still read lazily from the file and nothing is written back
    try:
        return torch.from_numpy(np.load(path, mmap_mode="c"))
    except (OSError, ValueError, EOFError) as error:
        raise _damaged(path, error) from None


class LoadCachedCased(mt.MapTransform):
    """``{"entry": folder}`` -> image (C, *S) and label (1, *S) mapped from the entry (+ ``label_indices``)."""

    def __init__(self, indices: bool) -> None:
        super().__init__(["entry"])
        self.indices = indices

    def __call__(self, data: dict) -> dict:
        data = dict(data)
        entry = Path(data["entry"])
        data["image"], data["label"] = _mapped(entry / "image.npy"), _mapped(entry / "label.npy")
        if self.indices:
            try:
                with np.load(entry / "indices.npz") as arrays:
                    data["label_indices"] = [torch.from_numpy(arrays[f"arr_{i}"]) for i in range(len(arrays.files))]
            except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
                raise _damaged(entry / "indices.npz", error) from None
        return data


def disk_datasets(train_items: list[dict[str, Any]], val_items: list[dict[str, Any]], entries: dict[str, Path],
                  data: Any, num_classes: int, prep: Preprocessing, validation: bool,
                  lesion_classes: tuple[int, ...] = ()) -> tuple[Dataset, Dataset | None, mt.Compose]:
    """Training and validation datasets over cache entries (case name -> entry folder) and the training chain.

    The training chain is :func:`~medseg_attn.segmentation.data.transforms.training_augmentation` with its class
    locations read from the entry instead of computed, and the label cast to float32 once cropped (the cache keeps
    it as small integers).
    """
    chain: list[mt.Transform] = [LoadCachedCased(indices=True)]
    for transform in training_augmentation(data, num_classes, prep, lesion_classes):
        if isinstance(transform, mt.ClassesToIndicesd):
            continue
        chain.append(transform)
        if isinstance(transform, mt.RandCropByLabelClassesd):
            chain.append(mt.EnsureTyped("label", dtype=torch.float32, track_meta=False))
    train_transform = mt.Compose(chain)

    def items(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"entry": str(entries[case["case"]]), "case": case["case"]} for case in cases]

    train_ds = Dataset(items(train_items), train_transform)
    val_ds = Dataset(items(val_items), LoadCachedCased(indices=False)) if validation else None
    return train_ds, val_ds, train_transform
