"""Segmentation training: patches -> network -> DiceCE, sliding-window validation, checkpoints, TensorBoard.

Run folder layout::

    RUN/plan.json              the dataset fingerprint and the plan (spacing, patch, batch, normalisation, mask)
    RUN/config.yaml            resolved configuration (planned values, labels, modality filled in)
    RUN/split.json             training / validation case names (or the fold)
    RUN/checkpoints/last.pt    after every epoch (resume from here)
    RUN/checkpoints/best.pt    best mean validation Dice so far
    RUN/history.csv            one row per epoch: loss, learning rate, validation Dice, timings
    RUN/training_curves.png    the same as a picture
    RUN/tensorboard/           scalars and validation overlays

The loop itself (learning-rate schedule over ``max_epochs`` or the budget ``minutes``, per-epoch seeding for
exact ``--resume``, checkpoints, history, TensorBoard, early stopping) is :func:`medseg_attn.training.loop.fit`,
shared with classification; this module supplies the segmentation parts: case lists, preprocessing, patches,
DiceCE and sliding-window validation.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from monai import transforms as mt
from monai.data import DataLoader, Dataset, list_data_collate
from monai.losses import DeepSupervisionLoss, DiceCELoss
from monai.metrics import compute_dice

from medseg_attn.config import Config, save_config
from medseg_attn.errors import UserError
from medseg_attn.io.manifest import recorded_run
from medseg_attn.io.segments import colors_from_dataset, resolve_colors
from medseg_attn.model_layout import find_checkpoint, fold_count, is_cv_run
from medseg_attn.networks.factory import build_network
from medseg_attn.plots import foreground_centre, overlay_rgb, save_training_curves
from medseg_attn.runtime.device import resolve_device
from medseg_attn.runtime.distributed import Distributed, partition, setup, shard
from medseg_attn.segmentation.data.cached import disk_datasets
from medseg_attn.segmentation.data.dataset_plan import plan_dataset
from medseg_attn.segmentation.data.datasets import (
    check_resume_data,
    declared_channels,
    load_dataset,
    split_cases,
)
from medseg_attn.segmentation.data.planning import Plan, describe_plan, save_plan
from medseg_attn.segmentation.data.preprocess import (
    preprocess_cases,
    training_fingerprint,
)
from medseg_attn.segmentation.data.sparse import ignore_index, without_ignore
from medseg_attn.segmentation.data.transforms import Preprocessing, preprocessing, training_augmentation
from medseg_attn.segmentation.evaluation.calibration import calibrate_run
from medseg_attn.segmentation.inference.predictor import Predictor
from medseg_attn.segmentation.losses import IgnoreDiceCELoss, RegionDiceBCELoss
from medseg_attn.segmentation.task import TASK
from medseg_attn.segmentation.workflows.finetune import check_source, load_initial_weights
from medseg_attn.segmentation.workflows.tensorboard_images import validation_attention_images
from medseg_attn.training.card import training_card
from medseg_attn.training.checkpoint import Checkpoint, load_checkpoint
from medseg_attn.training.loop import (
    TrainResult,
    TrainTask,
    Validation,
    build_optimizer,
    fit,
    learning_rate,
    open_run,
    seed_everything,
)
from medseg_attn.training.setup import build_datasets, recorded_split, seeded_loader

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "train", "learning_rate"]


class _Run:
    """State of one training run (kept together so the loop below reads top to bottom)."""

    def __init__(self, config: Config, output: Path, resume: bool, progress: bool, plan: Path | None = None) -> None:
        self.output = output
        self.progress = progress
        self.checkpoints = output / "checkpoints"
        if is_cv_run(output):  # a plain run would overwrite the CV run's config.yaml (and its later folds)
            folds = fold_count(output)
            raise UserError(f"{output}: holds a cross-validation run ({folds} folds); a plain train would take over "
                            f"its config.yaml: continue it with medseg-attn train --output {output} --resume, train "
                            f"one fold with --folds {folds} --fold K, or choose another --output")
        self.resumed: Checkpoint | None = open_run(config, output, resume)
        if not config.data.dataset:
            raise UserError("no dataset given: set data.dataset in the config or pass --data")
        self.dataset = load_dataset(config.data.dataset, config.data.cache_dir)
        if self.resumed is not None:  # --resume: the run's own classes and dimensionality, or one line
            check_resume_data(self.resumed, self.dataset, self.dataset.labels, output / "checkpoints" / "last.pt")
        elif config.train.init_from:  # fine-tuning: the source checked before any work (nothing written if refused)
            source = check_source(config.train.init_from, config.model, declared_channels(self.dataset))
            config = config.replace(train={"init_from": source["path"]})  # absolute: resumable from anywhere
        self.dist: Distributed = setup(resolve_device(config.train.device))
        device = resolve_device(config.train.device)
        resumed = resume and (output / "plan.json").exists()  # a resumed run keeps its RUN/plan.json
        kept = _kept_plan(output / "plan.json" if resumed else plan)  # ... and a CV fold the CV run's plan
        planned = plan_dataset(config, device.type, progress and self.dist.is_main, self.dist, self.dataset, kept)
        self.config, self.plan = planned.config, planned.plan
        if self.dist.is_main and not resumed:
            logger.info("%s", describe_plan(self.plan) if kept is None else
                        f"the cross-validation run's plan ({plan}): {self.plan.resolved.to_dict()}")
            output.mkdir(parents=True, exist_ok=True)
            save_plan(self.plan, output / "plan.json")
        self.labels = without_ignore(planned.labels)  # the classes the network predicts
        self.ignore = ignore_index(planned.labels)  # sparse labels: this value marks unannotated voxels
        self.regions = self.dataset.regions  # region-based labels: one sigmoid output per region
        if self.regions is not None and (self.ignore is not None or config.data.labels):
            raise UserError(f"{self.dataset.root}: region-based labels (regions_class_order) take their classes from "
                            f"dataset.json; an 'ignore' label or data.labels cannot be combined with them")
        self.outputs = len(self.regions.names) if self.regions else len(self.labels)  # the network's outputs
        self.prep = Preprocessing.from_plan(self.config.data, self.plan)
        self.device = self.dist.device(device)
        self.train_cases, self.val_cases = self._split(resume)
        self.has_validation = bool(self.val_cases)
        if not self.has_validation:
            logger.info("no validation: %d training case(s) and validation_fraction %g leave none to validate on; "
                        "checkpoints/best.pt is the last epoch's model", len(self.train_cases),
                        self.config.data.validation_fraction)
        data, batch = self.config.data, int(self.config.train.batch_size)
        if len(self.train_cases) * data.samples_per_case < batch:  # few cases: fill a batch from each visit
            samples = math.ceil(batch / max(1, len(self.train_cases)))
            logger.info("%d training case(s): %d patches per case visit (data.samples_per_case was %d) so a batch "
                        "of %d is full", len(self.train_cases), samples, data.samples_per_case, batch)
            self.config = self.config.replace(data={"samples_per_case": samples})
        if self.dist.enabled:  # this rank's part: it caches and trains on these, validates on those
            self.train_cases = partition(self.train_cases, self.dist, self.config.train.seed)
            self.val_cases = shard(self.val_cases, self.dist)

    def _split(self, resume: bool) -> tuple[list[dict], list[dict]]:
        data, seed = self.config.data, self.config.train.seed

        def draw() -> tuple[list[dict], list[dict]]:
            train, val = split_cases(self.dataset.training, data.validation_fraction, data.folds, data.fold, seed)
            return train, val[: data.max_validation_cases] if data.max_validation_cases else val

        record = {"seed": seed, "folds": data.folds, "fold": data.fold, "validation_fraction": data.validation_fraction}
        return recorded_split(self.output / "split.json", self.dataset.training, "case", resume, self.dist.is_main,
                              draw, record, source="the dataset")


def _datasets(run: _Run) -> tuple[Dataset, Dataset | None, mt.Compose]:
    num_classes = len(run.labels)
    label_values = num_classes + (run.ignore is not None)  # sparse labels: the ignore value is the highest
    pre = preprocessing(run.prep, ("image", "label"), num_classes=label_values)
    progress = run.progress and run.dist.is_main
    lesion_classes = _lesion_classes(run)
    if run.config.data.cache == "disk":  # every case preprocessed once into the cache, then read by memory map
        entries = preprocess_cases(run.dataset.training, run.prep, run.config.data, num_classes,
                                   progress=progress, dist=run.dist, label_values=label_values)
        if run.regions is not None:  # a region listing a value no label map holds would train on empty targets
            run.regions.check_values(_values_present(entries.values()), run.dataset.root / "dataset.json")
        return disk_datasets(run.train_cases, run.val_cases, entries, run.config.data, num_classes, run.prep,
                             run.has_validation, lesion_classes)
    train_transform = mt.Compose(pre + training_augmentation(run.config.data, num_classes, run.prep, lesion_classes))
    val_transform = mt.Compose(pre)
    train_ds, val_ds = build_datasets(run.train_cases, run.val_cases, train_transform, val_transform,
                                      run.config.data.cache == "memory", progress, run.has_validation)
    return train_ds, val_ds, train_transform


def _values_present(entries: Iterable[Path]) -> list[int]:
    """The label values present in any cached case (a class's location list is empty only where it is absent)."""
    present = {0}
    for entry in entries:
        with np.load(Path(entry) / "indices.npz") as arrays:
            present |= {int(name.rsplit("_", 1)[1]) for name in arrays.files if arrays[name].size}  # arr_<value>
    return sorted(present)


def _lesion_classes(run: _Run) -> tuple[int, ...]:
    """The label values whose patches are centred lesion by lesion (``data.lesion_sampling``)."""
    mode = run.config.data.lesion_sampling
    if mode == "voxel":
        return ()
    if mode == "lesion":
        return tuple(index for index in sorted(run.labels) if index > 0)
    named = {name.lower() for name in run.dataset.lesion_structures}
    chosen = tuple(index for index, name in sorted(run.labels.items()) if index > 0 and name.lower() in named)
    if chosen:
        logger.info("lesion sampling: patches centred lesion by lesion in %s",
                    ", ".join(run.labels[i] for i in chosen))
    return chosen


def train(config: Config, output: str | Path, resume: bool = False, progress: bool = True,
          plan: str | Path | None = None) -> TrainResult:
    """Train a segmentation network.

    Args:
        config: the run configuration (``data.dataset`` must be set).
        output: run folder (created).
        resume: continue the run in ``output`` from its last checkpoint.
        progress: show progress bars.
        plan: a ``plan.json`` to use instead of planning (a cross-validation fold: the CV run's plan).

    Raises:
        ValueError / FileNotFoundError: bad data, config or run folder (message names the file).
    """
    output = Path(output)
    run = _Run(config, output, resume, progress, None if plan is None else Path(plan))
    cfg, tcfg = run.config, run.config.train
    if run.dist.is_main:
        output.mkdir(parents=True, exist_ok=True)
        run.checkpoints.mkdir(exist_ok=True)
        save_config(cfg, output / "config.yaml")

    train_ds, val_ds, train_transform = _datasets(run)
    in_channels = _first_channels(train_ds)
    seed_everything(tcfg.seed)  # same initial weights for the same seed
    network = build_network(cfg.model, run.prep.spatial_dims, in_channels, run.outputs).to(run.device)
    if tcfg.init_from and run.resumed is None:  # fine-tuning (a resumed run has its own weights)
        load_initial_weights(network, tcfg.init_from, run.labels, in_channels, cfg.model, run.regions)
    optimizer = build_optimizer(network, tcfg)
    loss_fn: torch.nn.Module = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    if run.ignore is not None:
        loss_fn = IgnoreDiceCELoss(run.ignore, len(run.labels))
    if run.regions is not None:  # nnU-Net's region recipe: Dice + BCE per region
        loss_fn = RegionDiceBCELoss(run.regions)
    if cfg.model.deep_supervision:
        loss_fn = DeepSupervisionLoss(loss_fn, weight_mode="exp")
    predictor = Predictor(network, run.prep, run.labels, cfg.data.patch_size, cfg.inference, run.device,
                          regions=run.regions)

    def loader(seed: int) -> DataLoader:
        return seeded_loader(train_ds, train_transform, seed, run.dist.rank, _loader_batch(cfg), cfg.data.num_workers,
                             collate_fn=list_data_collate, prefetch=cfg.data.prefetch == "on" or (
                                 cfg.data.prefetch == "auto" and run.device.type == "cuda"),
                             pin_memory=run.device.type == "cuda")

    def loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        image = batch["image"].to(run.device, non_blocking=True)
        label = batch["label"].to(run.device, non_blocking=True)
        return loss_fn(model(image), label)

    def validate() -> Validation:
        scores, overlay, attention = _validate(predictor, val_ds, run.labels, tcfg.log_images, run.dist,
                                               run.ignore)
        images = {"val/overlay": overlay} if overlay is not None else {}
        images.update({f"val/attention_{level}": picture for level, picture in attention.items()})
        mean = float(np.nanmean(list(scores.values())))
        scalars = {"val/dice_mean": mean, **{f"val/dice_{name}": value for name, value in scores.items()}}
        return Validation(mean, row={f"val_dice_{name}": round(value, 4) for name, value in scores.items()},
                          scalars=scalars, images=images,
                          text=f"validation Dice {mean:.4f}")

    # the training set's ranges for the QC flags: each case read once, in workers, kept in the cache (CACHE/qc/)
    fingerprint = training_fingerprint(run.dataset.training, run.labels, run.prep.intensity == "ct",
                                       progress and run.dist.is_main, cfg.data.cache_dir, cfg.data.preprocess_workers,
                                       run.dist)
    task = TrainTask(
        network=network, optimizer=optimizer, loss=loss, loader=loader,
        steps_per_epoch=tcfg.steps_per_epoch or max(1, math.ceil(len(train_ds) / _loader_batch(cfg))),
        validate=validate if val_ds is not None else None, metric="val_dice", curves=save_training_curves,
        payload={"task": TASK.name, "config": cfg.to_dict(),
                 "labels": {int(k): v for k, v in run.labels.items()}, "preprocessing": run.prep.to_dict(),
                 "plan": run.plan.checkpoint_dict(), "regions": run.regions and run.regions.to_dict(),
                 "lesion_structures": list(run.dataset.lesion_structures),
                 "channel_names": list(run.dataset.channel_names) or None,
                 "in_channels": in_channels, "colors": resolve_colors(run.labels, colors_from_dataset(
                     cfg.data.dataset), f"{cfg.data.dataset}: colors"),
                 "card": training_card({"dataset": cfg.data.dataset, "training_cases": len(run.train_cases),
                                        "validation_cases": len(run.val_cases), "modality": cfg.data.modality,
                                        "spacing": run.prep.spacing and list(run.prep.spacing)}),
                 # the training set's ranges, which the QC flags of predictions compare with (docs/trust.md)
                 "training_fingerprint": fingerprint if run.dist.is_main else None},
    )
    with recorded_run(output if run.dist.is_main else None, "train") as manifest:  # RUN/run.json
        manifest.add_input(cfg.data.dataset, name="dataset", checksum=Path(cfg.data.dataset).is_file())
        if tcfg.init_from and run.resumed is None:  # the weights fine-tuning started from, with their checksum
            manifest.add_input(find_checkpoint(tcfg.init_from), name="init_from")
        result = fit(task, tcfg, output, run.resumed, run.device, progress, run.dist)
        if run.dist.is_main:  # temperature scaling on the validation cases, stored in best.pt
            best = run.checkpoints / "best.pt"
            if run.regions is not None:
                logger.info("calibration: skipped (temperature scaling is for softmax classes, not region sigmoids)")
            calibration = None if run.regions else calibrate_run(predictor, val_ds, best, output, tcfg.seed,
                                                                 run.ignore)
            manifest.update(calibration=calibration,
                            result={"epochs": result.epochs, "best_metric": result.best_metric,
                                    "stopped": result.stopped})
            if best.exists():
                manifest.add_model([best], device=str(run.device), payload=load_checkpoint(best))
    return result


def _kept_plan(path: Path | None) -> Plan | None:
    """The plan a run keeps instead of planning (RUN/plan.json when resuming; a CV fold: the CV run's plan, so every
    fold has the same); None: plan from the dataset's fingerprint."""
    return Plan.from_dict(json.loads(path.read_text()), str(path)) if path is not None else None


def _loader_batch(cfg: Config) -> int:
    """Cases per loader batch: each case yields ``samples_per_case`` patches."""
    return max(1, cfg.train.batch_size // max(1, cfg.data.samples_per_case))


def _first_channels(dataset: Dataset) -> int:
    item = dataset[0]
    item = item[0] if isinstance(item, list) else item
    return int(item["image"].shape[0])


@torch.no_grad()
def _validate(predictor: Predictor, dataset: Dataset, labels: dict[int, str], image: bool,
              dist: Distributed | None = None, ignore: int | None = None):
    """Mean Dice per foreground class over the validation cases (sliding window on the network grid).

    Under DDP each rank scores its share of the cases and the per-case scores of all ranks are gathered, so every
    rank returns the same means as a single process would.
    """
    num_classes = len(labels)
    regions = predictor.regions
    names = list(regions.names) if regions else [labels[i] for i in sorted(labels) if i > 0]
    scores = [np.zeros((0, len(names)))]  # (cases, C - 1) per-case Dice, NaN where the reference class is empty
    overlay, attention = None, {}
    for index in range(len(dataset)):
        item = dataset[index]
        probs = predictor.infer(item["image"])  # (K, *S)
        prediction = predictor.labels_of(probs).long()
        label = torch.as_tensor(item["label"][0]).long().to(prediction.device)
        if ignore is not None:  # unannotated voxels count nowhere
            prediction = torch.where(label == ignore, 0, prediction)
            label = torch.where(label == ignore, 0, label)
        one_hot = torch.nn.functional.one_hot
        if regions is not None:  # Dice of each region: its sigmoid above 0.5 against the label's region mask
            found, reference = (probs > 0.5)[None].float(), regions.targets(label[None, None])
        else:
            found = one_hot(prediction, num_classes).movedim(-1, 0)[None]
            reference = one_hot(label, num_classes).movedim(-1, 0)[None]
        # the functional form: MONAI's DiceMetric would all_gather by itself under torchrun, on ranks in step or not
        scores.append(compute_dice(found, reference, include_background=regions is not None,
                                   ignore_empty=True).cpu().numpy())
        if image and index == 0 and prediction.ndim == 3:
            centre = foreground_centre(label.cpu().numpy())
            picture = np.asarray(item["image"][0])[:, :, centre[2]]
            ref = label.cpu().numpy()[:, :, centre[2]]
            pred = prediction.cpu().numpy()[:, :, centre[2]]
            overlay = np.concatenate([overlay_rgb(np.rot90(picture), np.rot90(ref), classes=num_classes),
                                      overlay_rgb(np.rot90(picture), np.rot90(pred), classes=num_classes)], axis=1)
            # where each skip level's attention went on this case (empty without attention)
            attention = validation_attention_images(predictor.network, item["image"], label,
                                                    predictor.patch_size, predictor.inference.overlap)
    per_case = np.concatenate((dist or Distributed()).gather(np.concatenate(scores)), axis=0)
    scored = ~np.isnan(per_case)
    # mean over the cases where the class is present; 0 for a class absent from every case (as MONAI's mean_batch)
    values = np.where(scored, per_case, 0.0).sum(0) / np.maximum(scored.sum(0), 1)
    return {name: float(v) for name, v in zip(names, values, strict=True)}, overlay, attention
