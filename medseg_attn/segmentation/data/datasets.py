"""Case lists: Medical Segmentation Decathlon ``dataset.json`` and nnU-Net raw folders; splits and folds.

A :class:`SegmentationDataset` is a plain description (paths, labels, modality); MONAI datasets are built from
its ``training`` list of ``{"image": path or [paths], "label": path, "case": name}`` dicts by the engine.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg_attn.errors import UserError
from medseg_attn.io.suffixes import VOLUME_SUFFIXES
from medseg_attn.io.volumes import case_name, grid_mapping, is_image_file, read_geometry
from medseg_attn.segmentation.data.folds import assign_folds
from medseg_attn.segmentation.data.rtstruct_labels import rasterise_rtstruct_labels
from medseg_attn.segmentation.measures.regions import Regions

if TYPE_CHECKING:
    from medseg_attn.training.checkpoint import Checkpoint

logger = logging.getLogger(__name__)

__all__ = ["SegmentationDataset", "load_dataset", "split_cases", "check_cases", "check_class_names",
           "check_resume_data", "check_training_data", "declared_channels", "median_spacing"]

_MODALITY_WORDS = {"ct": "ct", "mr": "mr", "mri": "mr", "t1": "mr", "t2": "mr", "flair": "mr", "t1w": "mr",
                   "t2w": "mr", "adc": "mr", "dwi": "mr", "pd": "mr", "t1gd": "mr", "t1c": "mr"}


@dataclass
class SegmentationDataset:
    """A labelled dataset: where it is, what its classes and modality are, and its cases."""

    root: Path
    name: str
    labels: dict[int, str]
    modality: str | None  # 'ct', 'mr' or None when unknown
    channels: int
    training: list[dict[str, Any]] = field(default_factory=list)
    test: list[dict[str, Any]] = field(default_factory=list)
    channels_declared: bool = True  # False: no dataset.json said how many modalities (channels) there are
    regions: Regions | None = None  # region-based labels (nnU-Net v2 lists + regions_class_order); None: classes
    channel_names: tuple[str, ...] = ()  # dataset.json's channel_names / modality values, in channel order
    lesion_structures: tuple[str, ...] = ()  # classes counted lesion by lesion (dataset.json 'lesion_structures')


def _modality(names: list[str]) -> str | None:
    kinds = {_MODALITY_WORDS.get(str(n).strip().lower()) for n in names}
    kinds.discard(None)
    return kinds.pop() if len(kinds) == 1 else None


def _parse_labels(raw: Any, where: Path) -> dict[int, str]:
    """MSD writes {"0": "background"}; nnU-Net v2 writes {"background": 0} (values may be lists for regions)."""
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{where}: 'labels' must be a non-empty mapping of class index to name")
    labels: dict[int, str] = {}
    for key, value in raw.items():
        if str(key).lstrip("-").isdigit():
            labels[int(key)] = str(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            labels[value] = str(key)
        else:
            raise UserError(f"{where}: cannot read label entry {key!r}: {value!r} (expected index -> name)")
    if 0 not in labels:
        labels[0] = "background"
    check_class_names(labels, str(where))
    expected = list(range(len(labels)))
    if sorted(labels) != expected:
        raise UserError(f"{where}: label indices must be 0..{len(labels) - 1} without gaps, got {sorted(labels)}")
    return dict(sorted(labels.items()))


def check_class_names(labels: dict[int, str], where: str) -> None:
    """Refuse two classes of the same name (case and spaces ignored): statistics, QC columns and exports key on
    names, so the second would silently take the first's place.

    Raises:
        ValueError: naming ``where``, the name and both indices.
    """
    seen: dict[str, int] = {}
    for index, name in sorted(labels.items()):
        key = str(name).strip().lower()
        if key in seen:
            raise UserError(f"{where}: class name {name!r} is used by labels {seen[key]} and {index}; give each "
                             f"class its own name")
        seen[key] = index


def _resolve(root: Path, entry: str) -> Path:
    path = Path(entry)
    return path if path.is_absolute() else (root / path).resolve()


def _from_msd(json_path: Path, spec: dict[str, Any]) -> SegmentationDataset:
    root = json_path.parent
    raw = spec.get("labels")
    regions = Regions.from_labels(raw, spec.get("regions_class_order"), json_path) if isinstance(raw, dict) else None
    labels = _parse_labels(regions.labels if regions else raw, json_path)
    if regions and regions.max_value >= len(labels):  # label maps are checked against the painted classes
        raise UserError(f"{json_path}: region values go up to {regions.max_value}, but regions_class_order paints "
                        f"only {sorted(labels)}; each label value of the maps must be painted by one region")
    modality_names = list((spec.get("modality") or spec.get("channel_names") or {}).values())
    channels = max(1, len(modality_names))
    training = []
    for item in spec.get("training", []):
        if not isinstance(item, dict) or "image" not in item or "label" not in item:
            raise UserError(f"{json_path}: each 'training' entry needs 'image' and 'label', got {item!r}")
        images = item["image"] if isinstance(item["image"], list) else [item["image"]]
        paths = [_resolve(root, p) for p in images]
        training.append({"image": paths if len(paths) > 1 else paths[0], "label": _resolve(root, item["label"]),
                         "case": case_name(paths[0], strip_channel=len(paths) > 1)})
        if item.get("patient") is not None:  # cases of one patient stay in one fold (data/folds.py)
            training[-1]["patient"] = str(item["patient"])
    test = []
    for item in spec.get("test", []):
        image = item["image"] if isinstance(item, dict) else item
        images = image if isinstance(image, list) else [image]
        paths = [_resolve(root, p) for p in images]
        test.append({"image": paths if len(paths) > 1 else paths[0], "case": case_name(paths[0])})
    if not training:
        training = _scan_nnunet(root, channels, json_path)  # nnU-Net v2 dataset.json has no file lists
    _read_patients(spec.get("patients") or {}, training, json_path)
    name = str(spec.get("name") or root.name)
    return SegmentationDataset(root, name, labels, _modality(modality_names), channels, training, test,
                               channels_declared=bool(modality_names), regions=regions,
                               channel_names=tuple(str(n) for n in modality_names),
                               lesion_structures=_lesion_structures(spec.get("lesion_structures"), labels, json_path))


def _lesion_structures(raw: Any, labels: dict[int, str], where: Path) -> tuple[str, ...]:
    """dataset.json's ``lesion_structures``: class names whose connected components are lesions (counted,
    measured and evaluated one by one)."""
    if raw is None:
        return ()
    names = {name.lower(): name for index, name in labels.items() if index}
    if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
        raise UserError(f"{where}: 'lesion_structures' must be a list of class names, got {raw!r}")
    unknown = [n for n in raw if n.lower() not in names]
    if unknown:
        raise UserError(f"{where}: lesion_structures names {unknown}, which are not classes "
                        f"({', '.join(names.values())})")
    return tuple(names[n.lower()] for n in raw)


def _few(names: list[str], shown: int = 3) -> str:
    """A few names, then how many more: ``a, b, c and 5 more``."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _read_patients(patients: Any, training: list[dict[str, Any]], where: Path) -> None:
    """The top-level ``"patients": {case: patient}`` map into the cases (``case["patient"]``).

    Raises:
        UserError: not a mapping, keys that name no case (file names instead of case names: the map would be
            ignored and a patient's cases could land on both sides of a fold), or cases the map leaves out (and
            whose training entry names no patient either).
    """
    if not isinstance(patients, dict):
        raise UserError(f"{where}: 'patients' must map case names to patient names")
    if not patients:
        return
    names = {case["case"] for case in training}
    unknown = sorted(str(key) for key in patients if str(key) not in names)
    if unknown:
        raise UserError(f"{where}: 'patients' names {len(unknown)} case(s) that are not in the dataset: "
                        f"{_few(unknown)}; its keys must be case names such as {sorted(names)[0]!r} (file names "
                        f"without folder and suffix)")
    missing = sorted(case["case"] for case in training if case["case"] not in patients and "patient" not in case)
    if missing:
        raise UserError(f"{where}: 'patients' gives no patient for {len(missing)} case(s): {_few(missing)}; name "
                        f"the patient of every case (a case that is its own patient: its own name)")
    for case in training:
        if case["case"] in patients:
            case["patient"] = str(patients[case["case"]])


def _scan_nnunet(root: Path, channels: int, where: Path) -> list[dict[str, Any]]:
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise UserError(f"{where}: no 'training' list and no imagesTr/ + labelsTr/ folders beside it")
    cases = []
    for label in sorted(p for p in labels_dir.iterdir() if is_image_file(p)):
        name = case_name(label)
        suffix = next(s for s in VOLUME_SUFFIXES if label.name.lower().endswith(s))
        images = [images_dir / f"{name}_{c:04d}{suffix}" for c in range(channels)]
        if not images[0].exists() and (images_dir / label.name).exists():
            images = [images_dir / label.name]  # plain MSD-style names without channel suffix
        missing = [str(p) for p in images if not p.exists()]
        if missing:
            raise UserError(f"{label}: no matching image {missing[0]} in {images_dir}")
        cases.append({"image": images if len(images) > 1 else images[0], "label": label, "case": name})
    if not cases:
        raise UserError(f"{labels_dir}: no label files ({', '.join(VOLUME_SUFFIXES)}) found")
    return cases


def load_dataset(path: str | Path, cache_dir: str | None = None) -> SegmentationDataset:
    """Read a dataset from a ``dataset.json`` file, a folder holding one, or an nnU-Net raw folder (RTSTRUCT labels
    rasterised once into ``cache_dir``, ``data.cache_dir``; None: the default cache).

    MSD (``training``/``test`` lists, ``labels`` index -> name, ``modality``) and nnU-Net v2 (``labels`` name ->
    index, ``channel_names``, files found in imagesTr/labelsTr with ``_0000`` channel suffixes) are both read.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: malformed dataset.json, missing files, or no cases; the message names the file.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: dataset not found (expected dataset.json or a folder holding one)")
    json_path = path / "dataset.json" if path.is_dir() else path
    if json_path.is_file():
        try:
            spec = json.loads(json_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UserError(f"{json_path}: not valid JSON ({error})") from None
        if not isinstance(spec, dict):
            raise UserError(f"{json_path}: expected a JSON object with 'labels' and 'training'")
        dataset = _from_msd(json_path.resolve(), spec)
    elif path.is_dir():
        cases = _scan_nnunet(path, 1, path)
        values = set()
        for case in cases[:5]:  # name classes from a few label maps when nothing describes them
            from medseg_attn.io.readers import VolumeReader

            reader = VolumeReader()
            array, _ = reader.get_data(reader.read(case["label"]))
            values |= set(np.unique(np.asarray(array)).astype(int).tolist())
        labels = {i: ("background" if i == 0 else f"label_{i}") for i in range(int(max(values)) + 1)}
        dataset = SegmentationDataset(path.resolve(), path.name, labels, None, 1, cases, channels_declared=False)
    else:
        raise UserError(f"{path}: expected dataset.json or a folder with dataset.json or imagesTr/labelsTr")
    missing = [str(c["label"]) for c in dataset.training if not Path(c["label"]).exists()]
    missing += [str(p) for c in dataset.training for p in _as_list(c["image"]) if not Path(p).exists()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"{json_path}: listed file not found: {missing[0]}{more}")
    rasterise_rtstruct_labels(dataset.training, dataset.labels, dataset.regions, cache_dir)
    logger.info("dataset %s: %d training cases, %d classes, modality %s", dataset.name, len(dataset.training),
                len(dataset.labels), dataset.modality or "unknown")
    return dataset


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def declared_channels(dataset: SegmentationDataset) -> int | None:
    """The image channels dataset.json declares (its modalities), or None where nothing declared them."""
    return dataset.channels if dataset.channels_declared else None


def check_training_data(dataset: SegmentationDataset, labels: dict[int, str] | None = None,
                        voxels: bool = True, problems: list[str] | None = None) -> None:
    """The one dataset check of ``plan``, ``preprocess`` and ``train``: class names, then :func:`check_cases` on
    every training case (shapes, grids, channels vs the declared modalities, label values vs ``labels``).

    Args:
        problems: what :func:`check_cases` already found (e.g. in worker processes, remembered per case by
            :func:`~medseg_attn.segmentation.data.preprocess.checked_cases`); None runs it here.

    Raises:
        ValueError: one line for one problem, else every problem on its own line.
    """
    from medseg_attn.segmentation.data.sparse import ignore_index

    labels = labels or dataset.labels
    check_class_names(labels, f"{dataset.root}: labels")
    if problems is None:
        problems = check_cases(dataset.training, num_classes=len(labels), voxels=voxels,
                               channels=declared_channels(dataset), ignore=ignore_index(labels))
    if len(problems) == 1:
        raise UserError(problems[0])
    if problems:  # every problem at once, one line each, so a dataset is fixed in one go
        listing = "\n  ".join(problems)
        raise UserError(f"{len(problems)} problems in the training data:\n  {listing}")


def check_resume_data(checkpoint: Checkpoint, dataset: SegmentationDataset, labels: dict[int, str],
                      where: str | Path) -> None:
    """``train --resume``: the run's recorded dataset, classes and dimensionality against the data given now.

    Raises:
        ValueError: other classes (indices or names) or another dimensionality, one line with both sides.
    """
    saved_labels = checkpoint.labels
    saved_dims = int(checkpoint.preprocessing.get("spatial_dims") or 0)
    saved_data = checkpoint.config.get("data", {}).get("dataset") or "an unrecorded dataset"
    first = dataset.training[0] if dataset.training else None
    dims = len(read_geometry(_as_list(first["image"])[0]).shape) if first else saved_dims
    names = {int(k): str(v) for k, v in labels.items()}
    if saved_labels and (saved_labels != names or (saved_dims and dims != saved_dims)):
        def said(classes: dict[int, str], spatial: int) -> str:
            listed = ", ".join(f"{k}={v}" for k, v in sorted(classes.items()) if k)
            return f"classes {listed}; {spatial}D"

        raise UserError(f"{where}: this run was trained on {saved_data} ({said(saved_labels, saved_dims)}); this "
                         f"data is {dataset.root} ({said(names, dims)}); resume with the run's own data or start a "
                         f"new --output")
    here = str(Path(dataset.root).resolve())
    if saved_data != "an unrecorded dataset" and Path(saved_data).resolve() != Path(here) and \
            Path(saved_data).resolve().parent != Path(here):
        logger.warning("%s: resuming a run trained on %s with %s (same classes and dimensionality)", where,
                       saved_data, here)


def check_cases(cases: list[dict[str, Any]], num_classes: int | None = None, voxels: bool = True,
                channels: int | None = None, ignore: int | None = None) -> list[str]:
    """Checks of every case before training; all problems are collected, not only the first.

    Headers: readable, 2D/3D, positive finite spacing, non-singular affine, image and label on the same voxel grid
    (the same grid stored with axes flipped or permuted counts as the same: the pipeline reorients both). Images
    may be NIfTI/NRRD/MetaImage files or DICOM series folders. With ``voxels``, the image voxels are read and
    checked for NaN/Inf, and (with ``num_classes``) the label values for integers in ``0..num_classes-1``. With
    ``channels`` (the modalities dataset.json lists), the image channels (files x 4th-axis volumes) must match.
    With ``ignore`` (sparse labels' ignore value), a label map of nothing but that value is refused: no patch could
    be drawn from it.

    Returns:
        One line per problem, naming the file; empty when the cases are fine.
    """
    problems = []
    for case in cases:
        try:
            label = read_geometry(case["label"])
        except (ValueError, FileNotFoundError) as error:
            problems.append(str(error))
            continue
        images = _as_list(case["image"])
        for image_path in images:
            try:
                image = read_geometry(image_path)
            except (ValueError, FileNotFoundError) as error:
                problems.append(str(error))
                continue
            if channels is not None and image.channels * len(images) != channels:
                problems.append(f"{image_path}: {image.channels} volume(s) on the 4th axis x {len(images)} file(s) "
                                f"= {image.channels * len(images)} channel(s), but dataset.json lists {channels} "
                                f"modality(ies); list each modality or give 3D images")
                continue
            if len(image.shape) != len(label.shape) or sorted(image.shape) != sorted(label.shape):
                problems.append(f"{case['label']}: label shape {label.shape} does not match image "
                                f"{image_path} shape {image.shape}")
            elif grid_mapping(label.shape, label.affine, image.shape, image.affine) is None:
                apart = float(np.linalg.norm(label.affine[:-1, -1] - image.affine[:-1, -1]))
                problems.append(f"{case['label']}: label affine differs from image {image_path} (not the same voxel "
                                f"grid; origins {apart:.3g} mm apart)")
            elif voxels:
                problems += _voxel_problems(image_path)
        if voxels:
            problems += _label_problems(case["label"], num_classes, ignore)
    return problems


def _voxel_problems(path: Path) -> list[str]:
    from medseg_attn.io.readers import VolumeReader

    reader = VolumeReader()
    try:
        array, _ = reader.get_data(reader.read(path))
    except (ValueError, FileNotFoundError) as error:
        return [str(error)]
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.size(array) - np.isfinite(array).sum())
        if bad:
            return [f"{path}: {bad} voxel(s) are NaN or Inf"]
    return []


def _label_problems(path: Path, num_classes: int | None, ignore: int | None = None) -> list[str]:
    from medseg_attn.io.readers import VolumeReader

    reader = VolumeReader()
    try:
        array, _ = reader.get_data(reader.read(path))
    except (ValueError, FileNotFoundError) as error:
        return [str(error)]
    values = np.unique(array)
    bad = [v for v in values.tolist() if not np.isfinite(v) or v != int(v) or v < 0
           or (num_classes is not None and v >= num_classes)]
    if bad:
        shown = [int(v) if np.isfinite(v) and v == int(v) else v for v in bad[:5]]
        expected = f"0..{num_classes - 1}" if num_classes is not None else "integers >= 0"
        return [f"{path}: label values {shown} are outside the dataset's classes {expected}"]
    if ignore is not None and values.tolist() == [ignore]:
        return [f"{path}: every voxel is the 'ignore' label {ignore}, so nothing in this case is annotated (not "
                f"even background); annotate some voxels or leave the case out of dataset.json"]
    return []


def median_spacing(cases: list[dict[str, Any]]) -> tuple[float, ...]:
    """Median voxel spacing (mm) over the cases' images, read from headers only (nnU-Net's target spacing)."""
    spacings = [read_geometry(_as_list(c["image"])[0]).spacing for c in cases]
    if not spacings:
        raise UserError("no cases to compute a target spacing from")
    return tuple(float(round(v, 4)) for v in np.median(np.array(spacings), axis=0))


def split_cases(
    cases: list[dict[str, Any]], validation_fraction: float, folds: int, fold: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Deterministic train/validation split (shuffled by ``seed``), or fold ``fold`` of ``folds``-fold CV
    (cases of one patient in one fold: :func:`medseg_attn.segmentation.data.folds.assign_folds`)."""
    order = sorted(cases, key=lambda c: c["case"])
    random.Random(seed).shuffle(order)
    if folds > 1:
        if not 0 <= fold < folds:
            raise UserError(f"data.fold {fold}: expected 0..{folds - 1} for {folds}-fold cross-validation")
        validation = assign_folds(cases, folds, seed)[fold]
    else:
        count = int(round(len(order) * validation_fraction))
        if validation_fraction > 0 and len(order) > 2:  # with 1-2 cases every case trains (no validation)
            count = max(1, count)
        count = min(count, len(order) - 1)
        validation = order[:count]
    names = {c["case"] for c in validation}
    return [c for c in order if c["case"] not in names], validation
