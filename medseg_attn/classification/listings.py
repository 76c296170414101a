"""Labelled image lists for classification: ImageFolder trees, CSV listings, train/val/test layouts, splits.

* **ImageFolder** (the torchvision convention, without torchvision): ``root/<class_name>/<image>``; class names
  sorted alphabetically give the indices 0..K-1; images may sit in sub-folders of their class folder.
* **CSV listing**: a header with ``path`` and ``label`` columns; paths relative to the CSV's folder; labels are
  class names (sorted alphabetically, or numerically when every label is an integer). An optional ``mask``
  column names a label map per image, for multi-task (classification + segmentation) training.
* **Split layout**: a folder holding ``train/`` and optionally ``val/`` (or ``validation/``) and ``test/``, each
  an ImageFolder. Without a validation set, a stratified split of the training images is drawn (and recorded in
  the run folder by the engine).

Hidden files and folders (``.DS_Store``, ``.ipynb_checkpoints``) and files that are not images are skipped with
one warning per kind; an empty class folder, a missing or unreadable image, mixed 2D/3D images, and images of
different sizes without a resize setting are errors that name the file.
"""

from __future__ import annotations

import csv
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg_attn.errors import UserError
from medseg_attn.io.pictures import ImageInfo, image_info, is_classification_image
from medseg_attn.io.suffixes import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)

__all__ = ["ImageList", "ImageSets", "check_images", "describe_size", "is_hidden", "list_csv", "list_image_folder",
           "list_images", "load_image_sets", "split_layout", "stratified_split"]

SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}


@dataclass
class ImageList:
    """Labelled images: where they came from, the class names (index = position) and the samples.

    Each sample is ``{"image": absolute path (str), "label": class index, "name": path relative to the source}``.
    """

    source: Path
    classes: list[str]
    samples: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> list[int]:
        """Images per class, in class-index order."""
        tally = Counter(s["label"] for s in self.samples)
        return [tally.get(i, 0) for i in range(len(self.classes))]


@dataclass
class ImageSets:
    """The training list and, when given, the validation and test lists (same classes)."""

    train: ImageList
    val: ImageList | None = None
    test: ImageList | None = None


def _warn_skipped(kind: str, paths: list[Path]) -> None:
    if paths:
        shown = ", ".join(str(p) for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        logger.warning("skipped %d %s: %s", len(paths), kind, shown)


def is_hidden(name: str) -> bool:
    """Hidden files and folders (``.DS_Store``, ``.git``, ``__MACOSX``) are never images of a dataset."""
    return name.startswith(".") or name.startswith("__")


def _walk_images(folder: Path, hidden: list[Path], other: list[Path]) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted), noting hidden and non-image entries."""
    found = []
    for directory, subdirs, files in os.walk(folder):
        keep = []
        for name in sorted(subdirs):
            (hidden.append(Path(directory) / name) if is_hidden(name) else keep.append(name))
        subdirs[:] = keep
        for name in sorted(files):
            path = Path(directory) / name
            if is_hidden(name):
                hidden.append(path)
            elif is_classification_image(path):
                found.append(path)
            else:
                other.append(path)
    return sorted(found)


def list_image_folder(root: str | Path, classes: list[str] | None = None) -> ImageList:
    """List ``root/<class>/<image>``.

    Args:
        root: the ImageFolder root.
        classes: the class names of an existing model or training set; the folders must be among them (a
            validation or test set may lack some). None: the class folders found, sorted alphabetically.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: no class folders, an empty class folder, or a folder that is not a known class.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{root}: image folder not found")
    if not root.is_dir():
        raise UserError(f"{root}: expected an ImageFolder root (root/<class>/<image>) or a .csv listing")
    hidden: list[Path] = []
    other: list[Path] = []
    folders = []
    for entry in sorted(root.iterdir()):
        if is_hidden(entry.name):
            hidden.append(entry)
        elif entry.is_dir():
            folders.append(entry)
        else:
            other.append(entry)
    if not folders:
        raise UserError(f"{root}: holds no class folders; expected root/<class_name>/<image> "
                         f"(images: {', '.join(IMAGE_SUFFIXES)})")
    names = [f.name for f in folders]
    if classes is None:
        classes = sorted(names)
    else:
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise UserError(f"{root / unknown[0]}: class folder {unknown[0]!r} is not one of the model's classes "
                             f"{list(classes)}")
    listing = ImageList(root, list(classes))
    for folder in folders:
        images = _walk_images(folder, hidden, other)
        if not images:
            raise UserError(f"{folder}: class folder {folder.name!r} holds no images "
                             f"({', '.join(IMAGE_SUFFIXES)}); remove it or add images")
        label = listing.classes.index(folder.name)
        listing.samples += [{"image": str(p.resolve()), "label": label, "name": p.relative_to(root).as_posix()}
                            for p in images]
    _warn_skipped("hidden files or folders", hidden)
    _warn_skipped("files that are not images (or not in a class folder)", other)
    logger.info("%s: %d images in %d classes", root, len(listing.samples), len(listing.classes))
    return listing


def _class_order(labels: list[str]) -> list[str]:
    unique = set(labels)
    if all(label.lstrip("-").isdigit() for label in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def list_csv(path: str | Path, classes: list[str] | None = None) -> ImageList:
    """List the images of a CSV file with ``path`` and ``label`` columns.

    Raises:
        FileNotFoundError: the CSV or a listed image is missing (the message names it and the line).
        ValueError: missing columns, empty listing, unsupported image type, or a label outside ``classes``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CSV listing not found")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = {(c or "").strip().lower(): c for c in (reader.fieldnames or [])}
        if "path" not in columns or "label" not in columns:
            raise UserError(f"{path}: expected a header with 'path' and 'label' columns, got "
                             f"{list(reader.fieldnames or [])}")
        rows = [(reader.line_num, (r[columns["path"]] or "").strip(), (r[columns["label"]] or "").strip(),
                 (r.get(columns.get("mask", ""), "") or "").strip()) for r in reader]
    rows = [row for row in rows if row[1] or row[2]]
    if not rows:
        raise UserError(f"{path}: lists no images")
    for line, image, label, _ in rows:
        if not image or not label:
            raise UserError(f"{path}: line {line}: both 'path' and 'label' are needed")
    order = _class_order([row[2] for row in rows])
    if classes is None:
        classes = order
    listing = ImageList(path, list(classes))
    for line, image, label, mask in rows:
        file = _listed(path, image, line)
        if not is_classification_image(file):
            raise UserError(f"{file}: not a supported image type (listed in {path}, line {line}); expected one "
                             f"of {', '.join(IMAGE_SUFFIXES)}")
        if label not in listing.classes:
            raise UserError(f"{path}: line {line}: label {label!r} is not one of the model's classes "
                             f"{listing.classes}")
        sample = {"image": str(file.resolve()), "label": listing.classes.index(label), "name": image}
        if mask:
            sample["mask"] = str(_listed(path, mask, line).resolve())
        listing.samples.append(sample)
    masks = sum("mask" in s for s in listing.samples)
    if 0 < masks < len(listing.samples):
        raise UserError(f"{path}: {masks} of {len(listing.samples)} rows name a mask; give one for every image "
                         f"or none")
    logger.info("%s: %d images in %d classes", path, len(listing.samples), len(listing.classes))
    return listing


def _listed(listing: Path, entry: str, line: int) -> Path:
    file = Path(entry).expanduser()
    file = file if file.is_absolute() else listing.parent / file
    if not file.is_file():
        raise FileNotFoundError(f"{file}: image not found (listed in {listing}, line {line})")
    return file


def list_images(source: str | Path, classes: list[str] | None = None) -> ImageList:
    """An ImageFolder root or a ``.csv`` listing."""
    source = Path(source).expanduser()
    if source.suffix.lower() == ".csv":
        return list_csv(source, classes)
    return list_image_folder(source, classes)


def split_layout(root: Path) -> dict[str, Path] | None:
    """{'train': ..., 'val': ..., 'test': ...} when ``root`` holds train/ (+ val/ test/) and nothing else."""
    if not root.is_dir() or not (root / "train").is_dir():
        return None
    parts = {}
    for entry in root.iterdir():
        if is_hidden(entry.name) or not entry.is_dir():
            continue
        if entry.name not in SPLIT_NAMES:
            return None  # 'train' is then a class name among others
        parts[SPLIT_NAMES[entry.name]] = entry
    return parts


def load_image_sets(train: str | Path, val: str | Path | None = None, test: str | Path | None = None) -> ImageSets:
    """The training list (and validation/test lists) from config values.

    ``train`` may be an ImageFolder root, a CSV listing, or a folder holding ``train/`` [``val/``] [``test/``];
    explicit ``val`` / ``test`` take precedence over the folders found there. The validation and test sets use
    the training set's classes.
    """
    root = Path(train).expanduser()
    layout = split_layout(root)
    if layout is not None:
        logger.info("%s: split layout (%s)", root, ", ".join(sorted(layout)))
        train_path: Path = layout["train"]
        val = val if val is not None else layout.get("val")
        test = test if test is not None else layout.get("test")
    else:
        train_path = root
    sets = ImageSets(list_images(train_path))
    classes = sets.train.classes
    if len(classes) < 2:
        raise UserError(f"{train_path}: found {len(classes)} class ({classes}); classification needs at least 2")
    if val is not None:
        sets.val = list_images(val, classes)
    if test is not None:
        sets.test = list_images(test, classes)
    return sets


def stratified_split(samples: list[dict[str, Any]], fraction: float, seed: int
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out ``fraction`` of every class (at least one image of a class with two or more), shuffled by seed."""
    by_class: dict[int, list[dict[str, Any]]] = {}
    for sample in sorted(samples, key=lambda s: s["name"]):
        by_class.setdefault(sample["label"], []).append(sample)
    train, val = [], []
    rng = random.Random(seed)
    for label in sorted(by_class):
        group = by_class[label]
        rng.shuffle(group)
        count = int(round(len(group) * fraction))
        if fraction > 0 and len(group) > 1:
            count = max(1, count)
        count = min(count, len(group) - 1)
        val += group[:count]
        train += group[count:]
    return train, val


def describe_size(shape: tuple[int, ...]) -> str:
    """(64, 48) -> '64x48'."""
    return "x".join(str(s) for s in shape)


def check_images(samples: list[dict[str, Any]], resize: bool) -> list[ImageInfo]:
    """Read every image's header; report all unreadable files at once, then mixed dimensions or sizes.

    Args:
        samples: the images to check.
        resize: a resize setting exists (``data.image_size``), so sizes may differ.

    Returns:
        The header facts, in sample order.

    Raises:
        ValueError: unreadable files (all listed), 2D mixed with 3D, or different sizes without ``resize``.
    """
    infos, problems = [], []
    for sample in samples:
        try:
            infos.append(image_info(sample["image"]))
        except (ValueError, FileNotFoundError) as error:
            problems.append(str(error))
    if len(problems) == 1:
        raise UserError(problems[0])
    if problems:
        listing = "\n  ".join(problems)
        raise UserError(f"{len(problems)} unreadable images:\n  {listing}")
    dims = {info.spatial_dims for info in infos}
    if len(dims) > 1:
        two = next(i for i in infos if i.spatial_dims == 2)
        three = next(i for i in infos if i.spatial_dims == 3)
        raise UserError(f"{three.path}: is a 3D image ({describe_size(three.shape)}) but {two.path} is 2D "
                         f"({describe_size(two.shape)}); a dataset must be all 2D or all 3D")
    if not resize:
        first = infos[0]
        for info in infos[1:]:
            if info.shape != first.shape:
                raise UserError(f"{info.path}: image size {describe_size(info.shape)} differs from "
                                 f"{describe_size(first.shape)} ({first.path}); set data.image_size "
                                 f"(e.g. {list(first.shape)}) to resize every image to one size")
    if len(dims) == 1 and dims == {3}:
        channels = {info.channels for info in infos}
        if len(channels) > 1:
            odd = next(i for i in infos if i.channels != infos[0].channels)
            raise UserError(f"{odd.path}: has {odd.channels} channels but {infos[0].path} has "
                             f"{infos[0].channels}; volumes must have the same channels")
    return infos
