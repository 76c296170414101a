"""Classify images with a trained model; evaluate a model or a predictions CSV against labelled images.

``predictions.csv`` has one row per input file, in input order::

    file,class_name,class_index,probability_<class 0>,...,probability_<class K-1>

Evaluation adds the reference (``true_class``, ``true_index``, ``correct``) to those rows and writes the metrics
of :mod:`medseg_attn.classification.metrics` next to them.

:func:`write_attention_maps` writes where the classification head looked in each image: its class token's
attention over the encoder's bottleneck tokens, averaged over heads, upsampled to the image as it was read (2D:
a PNG overlay; 3D: a NIfTI on the input file's own voxel grid), maximum 1.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai import transforms as mt

from medseg_attn.classification.listings import ImageList, is_hidden, list_images
from medseg_attn.classification.metrics import classification_metrics, write_metrics
from medseg_attn.classification.task import TASK
from medseg_attn.classification.transforms import ImagePreprocessing, classification_transforms
from medseg_attn.config import ClassifyConfig, from_dict
from medseg_attn.errors import UserError
from medseg_attn.io.files import check_output_location, not_regular
from medseg_attn.io.formats import NIFTI, format_of
from medseg_attn.io.pictures import image_info, is_classification_image
from medseg_attn.io.suffixes import strip_suffix
from medseg_attn.io.tables import unescape_cell, write_csv
from medseg_attn.model_layout import find_checkpoint
from medseg_attn.runtime.device import resolve_device
from medseg_attn.training.checkpoint import load_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["Classifier", "collect_images", "evaluate_classifier", "predict_images", "read_predictions",
           "write_attention_maps", "write_predictions"]


class Classifier:
    """A trained classifier with its preprocessing: files in, class probabilities out.

    Args:
        network: the trained :class:`~medseg_attn.networks.heads.AttentionClassifier`.
        prep: the preprocessing it was trained with.
        classes: class names (index = position).
        device: where to run.
        batch_size: images per forward pass.
        multitask: the network also returns segmentation logits (ignored here).
        source: where the network came from (its checkpoint), for error messages.
    """

    def __init__(self, network: torch.nn.Module, prep: ImagePreprocessing, classes: list[str],
                 device: torch.device | str = "cpu", batch_size: int = 16, multitask: bool = False,
                 source: str = "classifier") -> None:
        self.network = network.eval()
        self.source = source
        self.prep = prep
        self.classes = list(classes)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.multitask = multitask
        self._transform = mt.Compose(classification_transforms(prep, None))

    @classmethod
    def from_checkpoint(cls, model: str | Path, device: str = "auto", batch_size: int | None = None) -> Classifier:
        """Load a classification run folder (``checkpoints/best.pt``) or checkpoint file.

        Raises:
            FileNotFoundError: nothing at ``model``.
            ValueError: not a classification checkpoint, or one this version cannot rebuild.
        """
        path = find_checkpoint(model)
        checkpoint = load_checkpoint(path)
        if not TASK.owns(checkpoint):
            raise UserError(f"{path}: is not a classification checkpoint (train one with "
                             f"'medseg-attn classify train')")
        network = TASK.network(checkpoint, path)
        try:
            config: ClassifyConfig = from_dict(checkpoint.config, ClassifyConfig)
            prep = ImagePreprocessing.from_dict(checkpoint.preprocessing)
            classes, segmentation_classes = checkpoint.classes, checkpoint.segmentation_classes
        except (KeyError, RuntimeError, TypeError) as error:
            raise UserError(f"{path}: checkpoint does not match this medseg-attn version ({error})") from None
        resolved = resolve_device(device)
        logger.info("loaded %s (%d classes, epoch %s, best %s %s)", path, len(classes), checkpoint.epoch,
                    config.train.monitor, checkpoint.best_metric)
        return cls(network.to(resolved), prep, classes, resolved, batch_size or config.train.batch_size,
                   segmentation_classes > 0, str(path))

    @torch.no_grad()
    def probabilities(self, paths: Sequence[str | Path], progress: bool = False) -> np.ndarray:
        """(N, K) class probabilities for image files, in order."""
        from tqdm import tqdm

        paths = [Path(p) for p in paths]
        self._warn_resized(paths)
        out = []
        for start in tqdm(range(0, len(paths), self.batch_size), desc="classify", unit="batch", leave=False,
                          disable=not progress):
            batch = torch.stack([self._transform({"image": str(p)})["image"]
                                 for p in paths[start:start + self.batch_size]])
            result = self.network(batch.to(self.device))
            logits = result[0] if self.multitask else result
            out.append(logits.float().softmax(1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), dtype=np.float32)

    def check_attention(self) -> None:
        """Raise a one-line ValueError naming the checkpoint when the head has no attention to show."""
        if not getattr(getattr(self.network, "head", None), "attention_enabled", False):
            raise UserError(f"{self.source}: has no attention maps: this classifier was trained with attention off "
                             f"(model.attention: false)")

    @torch.no_grad()
    def attention_map(self, path: str | Path) -> np.ndarray:
        """Where the head looked in one image: (*S) in [0, 1] on the image as read (see :func:`read_image`:
        (H, W) for 2D, (X, Y, Z) in RAS order for NIfTI volumes, file order for other volumes).

        The class token's weights over the bottleneck tokens (mean over heads) are upsampled by the encoder's
        stride to the network input (token centres on their blocks' centres), then resized to the image's size.
        """
        import torch.nn.functional as F

        self.check_attention()
        path = Path(path)
        sample = self._transform({"image": str(path)})["image"]  # (C, *size)
        size = tuple(sample.shape[1:])
        weights = self.network.attention_map(sample[None].to(self.device))  # (1, heads, *grid)
        weights = weights.float().mean(1, keepdim=True)  # (1, 1, *grid)
        divisor = self.network.divisor
        padded = [-(-s // divisor) * divisor for s in size]
        mode = "bilinear" if len(size) == 2 else "trilinear"
        values = F.interpolate(weights, size=padded, mode=mode, align_corners=False)
        values = values[(slice(None), slice(None)) + tuple(slice(0, s) for s in size)]  # (1, 1, *size)
        shape = _read_shape(path)
        if tuple(shape) != size:
            values = F.interpolate(values, size=tuple(shape), mode=mode, align_corners=False)
        values = values[0, 0].cpu().numpy()
        top = float(values.max())
        return np.clip(values / top if top > 0 else values, 0, 1).astype(np.float32)

    def _warn_resized(self, paths: list[Path]) -> None:
        if self.prep.resized:
            return  # training resized every image too
        odd = [p for p in paths if image_info(p).shape != self.prep.image_size]
        if odd:
            logger.warning("%d image(s) differ from the training size %s and are resized (first: %s)", len(odd),
                           "x".join(map(str, self.prep.image_size)), odd[0])


def _read_shape(path: Path) -> tuple[int, ...]:
    """The spatial shape :func:`read_image` gives for a file (NIfTI with 3 or more axes: in RAS axis order, a
    last spatial axis of length 1 dropped)."""
    if format_of(path) is NIFTI:
        import nibabel as nib

        from medseg_attn.io.headers import load_nifti

        image = load_nifti(path)
        if len(image.shape) >= 3:
            shape = [0, 0, 0]
            for axis, (ras_axis, _) in enumerate(nib.orientations.io_orientation(image.affine)):
                shape[int(ras_axis)] = int(image.shape[axis])
            return tuple(shape[:2]) if shape[2] == 1 else tuple(shape)
    return image_info(path).shape


def _attention_target(folder: Path, file: Path, root: Path, volume: bool) -> Path:
    """FOLDER/<the file's folder relative to root>/<name without its image suffix>_attention.png|.nii.gz"""
    name = strip_suffix(file.name)
    relative = file.parent.resolve().relative_to(root)
    return folder / relative / f"{name}_attention{'.nii.gz' if volume else '.png'}"


def write_attention_maps(classifier: Classifier, files: Sequence[str | Path], folder: str | Path,
                         progress: bool = False) -> list[Path]:
    """Write the head's attention for each image into ``folder``, keeping the inputs' sub-folders.

    2D images give ``<name>_attention.png`` (the image beside the image with the map as heat overlay and a colour
    bar); 3D volumes give ``<name>_attention.nii.gz`` on exactly the input's voxel grid (a NIfTI input's header is
    copied; NRRD/MHA/DICOM volumes get their RAS affine).

    Raises:
        ValueError: the classifier has no attention (before any image).
    """
    import os

    from tqdm import tqdm

    from medseg_attn.io.nifti import write_nifti
    from medseg_attn.io.pictures import read_image
    from medseg_attn.io.volumes import read_geometry
    from medseg_attn.plots import save_picture_attention_png

    classifier.check_attention()
    paths = [Path(f) for f in files]
    check_output_location(folder, paths, folder=True, option="--attention-maps")  # never among the inputs
    root = Path(os.path.commonpath([str(p.parent.resolve()) for p in paths])) if paths else Path()
    written = []
    for path in tqdm(paths, desc="attention", unit="image", leave=False, disable=not progress):
        values = classifier.attention_map(path)
        volume = values.ndim == 3
        target = _attention_target(Path(folder), path, root, volume)
        if not volume:
            image, _ = read_image(path)
            save_picture_attention_png(target, image, values, title=f"{path.name}")
        elif format_of(path) is NIFTI:
            import nibabel as nib

            orientation = nib.orientations.io_orientation(nib.load(str(path)).affine)
            back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), orientation)
            stored = nib.orientations.apply_orientation(values, back)  # RAS order -> the file's own order
            write_nifti(np.ascontiguousarray(stored), target, reference=path, unit_interval=True,
                        description="classification head attention")
        else:
            write_nifti(values, target, affine=read_geometry(path).affine, unit_interval=True,
                        description="classification head attention")
        written.append(target)
    return written


def collect_images(items: Sequence[str | Path]) -> list[Path]:
    """Image files from files and folders (searched recursively; hidden and non-image files skipped).

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: a folder without images, or a file that is not an image.
    """
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            visible = [p for p in path.rglob("*") if not any(is_hidden(part) for part in p.relative_to(path).parts)]
            for problem in filter(None, map(not_regular, visible)):
                logger.warning("skipped %s", problem)  # a dangling link or a device is named, never dropped silently
            files = sorted(p for p in visible if p.is_file())
            images = [p for p in files if is_classification_image(p)]
            if len(images) < len(files):
                logger.warning("skipped %d file(s) in %s that are not images", len(files) - len(images), path)
            if not images:
                raise UserError(f"{path}: folder holds no images (png, jpg, tif, bmp, dcm, nii, nii.gz, nrrd, mha)")
            found += images
        elif path.is_file():
            if not is_classification_image(path):
                raise UserError(f"{path}: not a supported image type")
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: input not found")
    return found


def _rows(files: Sequence[str | Path], probabilities: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    rows = []
    for file, probs in zip(files, probabilities, strict=True):
        index = int(np.argmax(probs))
        row: dict[str, Any] = {"file": str(file), "class_name": classes[index], "class_index": index}
        row.update({f"probability_{name}": f"{float(p):.6f}" for name, p in zip(classes, probs, strict=True)})
        rows.append(row)
    return rows


def write_predictions(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write prediction rows as CSV (atomically)."""
    return write_csv(path, rows, list(rows[0]) if rows else ["file"])


def predict_images(classifier: Classifier, files: Sequence[str | Path], output: str | Path,
                   progress: bool = False) -> list[dict[str, Any]]:
    """Classify ``files`` and write ``output`` (predictions CSV); returns the rows.

    Raises:
        ValueError: ``output`` is one of the input files (before any image is read).
    """
    check_output_location(output, files, folder=False)
    probabilities = classifier.probabilities(files, progress=progress)
    rows = _rows(files, probabilities, classifier.classes)
    write_predictions(rows, output)
    return rows


def read_predictions(path: str | Path, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """Files and (N, K) probabilities from a predictions CSV (columns ``probability_<class>``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: predictions CSV not found")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [f"probability_{name}" for name in classes]
        missing = [c for c in ["file"] + columns if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}: missing column(s) {missing} for classes {classes}")
        rows = list(reader)
    try:
        probabilities = np.array([[float(r[c]) for c in columns] for r in rows], dtype=np.float64)
    except ValueError as error:
        raise UserError(f"{path}: a probability is not a number ({error})") from None
    return [unescape_cell(r["file"]) for r in rows], probabilities.reshape(len(rows), len(classes))


def evaluate_classifier(reference: ImageList | str | Path, output: str | Path, classifier: Classifier | None = None,
                        predictions: str | Path | None = None, classes: list[str] | None = None,
                        progress: bool = False) -> dict[str, Any]:
    """Score a model (``classifier``) or a predictions CSV against labelled images; write the report to ``output``.

    Args:
        reference: the labelled images: an :class:`ImageList`, an ImageFolder root or a CSV listing.
        output: folder for ``metrics.json``, ``per_class.csv``, ``confusion_matrix.csv/.png``,
            ``predictions.csv``.
        classifier: the model to run on the reference images; or
        predictions: a predictions CSV to score (rows matched to the reference images by path).
        classes: class names when scoring a CSV without a model (default: the reference's).

    Returns:
        The metrics (see :func:`~medseg_attn.classification.metrics.classification_metrics`).
    """
    class_names = classifier.classes if classifier is not None else classes
    listing = reference if isinstance(reference, ImageList) else list_images(reference, class_names)
    class_names = class_names or listing.classes
    samples = listing.samples
    if not samples:
        raise UserError(f"{listing.source}: no labelled images to evaluate")
    truth = np.array([s["label"] for s in samples])
    files = [s["image"] for s in samples]
    sources = [reference] if isinstance(reference, (str, Path)) else []
    check_output_location(output, [*sources, *([predictions] if predictions else []), *files], folder=True)
    if classifier is not None:
        probabilities = classifier.probabilities(files, progress=progress)
    elif predictions is not None:
        predicted_files, predicted = read_predictions(predictions, class_names)
        index = {str(Path(f).expanduser().resolve()): i for i, f in enumerate(predicted_files)}
        missing = [f for f in files if f not in index]
        if missing:
            raise UserError(f"{predictions}: has no row for {len(missing)} reference image(s), e.g. {missing[0]}")
        probabilities = predicted[[index[f] for f in files]]
    else:
        raise UserError("evaluate needs a model or a predictions CSV")
    metrics = classification_metrics(truth, probabilities, class_names)
    output = Path(output)
    write_metrics(metrics, class_names, output)
    rows = _rows(files, probabilities, class_names)
    for row, label in zip(rows, truth, strict=True):
        row.update({"true_class": class_names[label], "true_index": int(label),
                    "correct": int(row["class_index"] == label)})
    write_predictions(rows, output / "predictions.csv")
    logger.info("%d images: accuracy %.4f, balanced accuracy %.4f, macro F1 %.4f, AUC %s", metrics["images"],
                metrics["accuracy"], metrics["balanced_accuracy"], metrics["macro_f1"],
                "n/a" if math.isnan(metrics["auc"]) else f"{metrics['auc']:.4f}")
    return metrics
