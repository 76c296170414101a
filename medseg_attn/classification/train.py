"""Classification training on the shared loop: ImageFolder / CSV images -> encoder + head -> cross-entropy.

Run folder layout (as for segmentation)::

    RUN/config.yaml            resolved configuration (absolute data paths)
    RUN/split.json             training / validation image names (the stratified split, when one was drawn)
    RUN/checkpoints/last.pt    after every epoch (resume from here)
    RUN/checkpoints/best.pt    best validation value of ``train.monitor`` (what predict uses)
    RUN/history.csv            per epoch: loss, learning rate, validation loss, accuracy, balanced accuracy,
                               macro F1, AUC, timings
    RUN/training_curves.png    the same as a picture
    RUN/confusion_matrix.png   of the best validation so far
    RUN/tensorboard/           scalars and the validation confusion matrix

Checkpoints carry the class names, the resolved preprocessing and the config, and load with
``torch.load(..., weights_only=True)``. Class imbalance: ``train.balance: sampler`` draws every class equally
often (a seeded ``WeightedRandomSampler``), ``loss`` weights the cross-entropy by inverse class frequency.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai import transforms as mt
from monai.data import DataLoader, Dataset
from monai.losses import DiceCELoss
from torch.utils.data import WeightedRandomSampler

from medseg_attn.classification.listings import ImageSets, check_images, load_image_sets, stratified_split
from medseg_attn.classification.metrics import (
    classification_metrics,
    confusion_matrix_image,
    save_classification_curves,
    save_confusion_matrix_png,
)
from medseg_attn.classification.task import NAME
from medseg_attn.classification.transforms import ImagePreprocessing, classification_transforms
from medseg_attn.config import ClassifyConfig, save_config
from medseg_attn.errors import UserError
from medseg_attn.io.pictures import read_image
from medseg_attn.io.segments import resolve_colors
from medseg_attn.networks.factory import build_classifier
from medseg_attn.runtime.device import resolve_device
from medseg_attn.runtime.distributed import partition, setup, shard
from medseg_attn.training.card import training_card
from medseg_attn.training.loop import (
    TrainResult,
    TrainTask,
    Validation,
    build_optimizer,
    fit,
    open_run,
    seed_everything,
)
from medseg_attn.training.setup import build_datasets, recorded_split, seeded_loader
from medseg_attn.training.state import Best

logger = logging.getLogger(__name__)

__all__ = ["balanced_sampler", "class_weights", "resolve_preprocessing", "train_classifier"]


def resolve_preprocessing(config: ClassifyConfig, infos: list) -> ImagePreprocessing:
    """Fix dimensions, channels and size from the config and the training images' headers."""
    data = config.data
    dims = infos[0].spatial_dims
    if data.image_size is not None and len(data.image_size) != dims:
        raise UserError(f"data.image_size {list(data.image_size)} has {len(data.image_size)} sides but the images "
                         f"are {dims}D (e.g. {infos[0].path})")
    if dims == 2:
        channels = {"grayscale": 1, "rgb": 3}.get(data.color) or (3 if any(i.channels == 3 for i in infos) else 1)
    else:
        channels = infos[0].channels
    size = tuple(data.image_size) if data.image_size is not None else tuple(infos[0].shape)
    return ImagePreprocessing(dims, channels, size, data.intensity, tuple(data.ct_window),  # type: ignore[arg-type]
                              data.image_size is not None)


def class_weights(counts: np.ndarray) -> torch.Tensor:
    """Inverse-frequency cross-entropy weights ``N / (K * n_k)``: every class weighs as much in total."""
    counts = np.asarray(counts, dtype=np.float64)
    return torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)


def balanced_sampler(labels: list[int], counts: np.ndarray, generator: torch.Generator) -> WeightedRandomSampler:
    """Draws ``len(labels)`` images per epoch with replacement, every class equally often on average."""
    per_image = (1.0 / np.asarray(counts, dtype=np.float64))[np.asarray(labels)]
    return WeightedRandomSampler(per_image.tolist(), len(labels), replacement=True, generator=generator)


def _check_bottleneck(config: ClassifyConfig, prep: ImagePreprocessing) -> None:
    model = config.model
    divisor = model.first_stride * 2 ** (len(model.channels) - 1)
    grid = [math.ceil(s / divisor) for s in prep.image_size]
    if math.prod(grid) < 2:
        raise UserError(f"images of {list(prep.image_size)} leave a 1-voxel bottleneck with {len(model.channels)} "
                         f"levels (first_stride {model.first_stride}); use fewer model.channels levels or a larger "
                         f"data.image_size")
    if any(s % divisor for s in prep.image_size):
        logger.info("image size %s is not a multiple of %d: images are zero-padded inside the network",
                    list(prep.image_size), divisor)


def _split(sets: ImageSets, config: ClassifyConfig, output: Path, resume: bool) -> tuple[list[dict], list[dict]]:
    """Training and validation samples: the given validation set, or a stratified split recorded in split.json."""
    train = sets.train.samples
    if sets.val is not None:
        return train, sets.val.samples
    fraction, seed = config.data.validation_fraction, config.train.seed
    record = {"seed": seed, "validation_fraction": fraction, "stratified": True}
    return recorded_split(output / "split.json", train, "name", resume, int(os.environ.get("RANK", "0")) == 0,
                          lambda: stratified_split(train, fraction, seed), record, source=str(sets.train.source))


def _segmentation_classes(samples: list[dict]) -> int:
    """Classes of the multi-task label maps: 1 + their largest value (every mask is read once)."""
    largest = 0
    for sample in samples:
        mask, _ = read_image(sample["mask"])
        values = np.unique(mask)
        if np.any(values < 0) or np.any(values != np.round(values)):
            raise UserError(f"{sample['mask']}: mask values must be integer class indices >= 0")
        largest = max(largest, int(values.max()))
    if largest < 1:
        raise UserError("every multi-task mask is empty (all 0): nothing to segment")
    return largest + 1


def train_classifier(config: ClassifyConfig, output: str | Path, resume: bool = False,
                     progress: bool = True) -> TrainResult:
    """Train an image classifier (encoder + classification head) on an ImageFolder or CSV listing.

    Args:
        config: the run configuration (``data.train`` must be set).
        output: run folder (created).
        resume: continue the run in ``output`` from its last checkpoint.
        progress: show progress bars.

    Raises:
        ValueError / FileNotFoundError: bad images, folders, config or run folder (the message names the file).
    """
    output = Path(output)
    resumed = open_run(config, output, resume)
    data, tcfg = config.data, config.train
    if not data.train:
        raise UserError("no training images given: set data.train in the config or pass --data")
    sets = load_image_sets(data.train, data.val, data.test)
    classes = sets.train.classes
    train_samples, val_samples = _split(sets, config, output, resume)
    infos = check_images(train_samples + val_samples, resize=data.image_size is not None)
    prep = resolve_preprocessing(config, infos)
    _check_bottleneck(config, prep)
    multitask = config.model.multitask
    if multitask and not all("mask" in s for s in train_samples + val_samples):
        raise UserError(f"{sets.train.source}: model.multitask needs a label map per image: a CSV listing with "
                         f"path,label,mask columns")
    segmentation_classes = _segmentation_classes(train_samples) if multitask else 0
    resolved = {key: str(Path(value).expanduser().resolve()) if value else None
                for key, value in (("train", data.train), ("val", data.val), ("test", data.test))}
    config = config.replace(data=resolved)
    dist = setup(resolve_device(tcfg.device))
    device = dist.device(resolve_device(tcfg.device))
    if dist.is_main:
        output.mkdir(parents=True, exist_ok=True)
        save_config(config, output / "config.yaml")
    counts = np.bincount([s["label"] for s in train_samples], minlength=len(classes))
    logger.info("classes %s; training images per class %s; %d validation images", classes, counts.tolist(),
                len(val_samples))
    if np.any(counts == 0):
        missing = [classes[k] for k in np.flatnonzero(counts == 0)]
        raise UserError(f"{sets.train.source}: no training images left for class(es) {missing}")

    has_validation = bool(val_samples)
    if dist.enabled:  # this rank's part: it caches and trains on these, validates on those
        train_samples = partition(train_samples, dist, tcfg.seed)
        val_samples = shard(val_samples, dist)
    train_transform = mt.Compose(classification_transforms(prep, data.augmentation, mask=multitask))
    val_transform = mt.Compose(classification_transforms(prep, None, mask=multitask))
    train_ds, val_ds = build_datasets(train_samples, val_samples, train_transform, val_transform, data.cache,
                                      progress and dist.is_main, has_validation)

    seed_everything(tcfg.seed)  # same initial weights for the same seed
    network = build_classifier(config.model, prep.spatial_dims, prep.channels, len(classes),
                               segmentation_classes).to(device)
    optimizer = build_optimizer(network, tcfg)
    weights = None
    if tcfg.balance == "loss":
        weights = class_weights(counts).to(device)
    segmentation_loss = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)

    def loader(seed: int) -> DataLoader:
        labels = [s["label"] for s in train_samples]
        factory = (lambda generator: balanced_sampler(labels, counts, generator)) if tcfg.balance == "sampler" else None
        return seeded_loader(train_ds, train_transform, seed, dist.rank, tcfg.batch_size, data.num_workers, factory,
                             pin_memory=device.type == "cuda")

    def loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        image = batch["image"].to(device, non_blocking=True)
        label = torch.as_tensor(batch["label"]).long().to(device)
        output_ = model(image)
        logits = output_[0] if multitask else output_
        value = F.cross_entropy(logits.float(), label, weight=weights, label_smoothing=tcfg.label_smoothing)
        if multitask:
            mask = batch["mask"].to(device, non_blocking=True)
            value = value + config.model.segmentation_weight * segmentation_loss(output_[1], mask)
        return value

    # the best monitored value so far, for confusion_matrix.png (fit keeps its own for best.pt; same rule)
    best = Best(higher_is_better=tcfg.monitor != "loss")
    if resumed is not None:
        best.value = resumed.best_metric

    def validate() -> Validation:
        truth, probabilities = _predict_dataset(network, val_ds, tcfg.batch_size, device, multitask)
        if dist.enabled:  # every rank scores its share; all ranks compute the metrics over all of them
            parts = dist.gather((truth, probabilities))
            truth = np.concatenate([t for t, _ in parts])
            probabilities = np.concatenate([p.reshape(len(p), len(classes)) for _, p in parts])
        metrics = classification_metrics(truth, probabilities, classes)
        values = {key: metrics[key] for key in ("loss", "accuracy", "balanced_accuracy", "macro_f1", "auc")}
        monitored = values[tcfg.monitor]
        images = {}
        title = f"validation: accuracy {values['accuracy']:.3f}, balanced {values['balanced_accuracy']:.3f}"
        if tcfg.log_images:
            images["val/confusion_matrix"] = confusion_matrix_image(np.asarray(metrics["confusion_matrix"]), classes,
                                                                     title)
        if dist.is_main and best.update(monitored):
            save_confusion_matrix_png(np.asarray(metrics["confusion_matrix"]), classes,
                                      output / "confusion_matrix.png", title)
        return Validation(
            metric=monitored,
            row={f"val_{key}": _round(value) for key, value in values.items()},
            scalars={f"val/{key}": value for key, value in values.items() if not math.isnan(value)},
            images=images,
            text=f"validation {tcfg.monitor.replace('_', ' ')} {monitored:.4f} (accuracy {values['accuracy']:.4f})",
        )

    task = TrainTask(
        network=network, optimizer=optimizer, loss=loss, loader=loader,
        steps_per_epoch=tcfg.steps_per_epoch or max(1, math.ceil(len(train_ds) / tcfg.batch_size)),
        validate=validate if val_ds is not None else None, metric=f"val_{tcfg.monitor}",
        higher_is_better=tcfg.monitor != "loss", curves=save_classification_curves,
        payload={"task": NAME, "config": config.to_dict(), "classes": list(classes),
                 "labels": {i: name for i, name in enumerate(classes)}, "preprocessing": prep.to_dict(),
                 "in_channels": prep.channels, "segmentation_classes": segmentation_classes,
                 "colors": resolve_colors(dict(enumerate(classes))),
                 "card": training_card({"training": str(data.train), "training_images": len(train_samples),
                                        "validation_images": len(val_samples), "classes": len(classes)})},
    )
    return fit(task, tcfg, output, resumed, device, progress, dist)


def _round(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 4)


@torch.no_grad()
def _predict_dataset(network: torch.nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
                     multitask: bool) -> tuple[np.ndarray, np.ndarray]:
    """(N,) true labels and (N, K) probabilities over a dataset, in order."""
    was_training = network.training
    network.eval()
    truth, probabilities = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        output = network(batch["image"].to(device))
        logits = output[0] if multitask else output
        probabilities.append(logits.float().softmax(1).cpu().numpy())
        truth.append(np.asarray(batch["label"]))
    network.train(was_training)
    if not truth:  # an empty share (more ranks than validation images)
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(truth), np.concatenate(probabilities)

