"""Run set-up both tasks share: the split recorded in ``RUN/split.json`` (restored on resume), cached or plain
datasets, and seeded loaders that give every DDP rank its own reproducible order and augmentation."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, DataLoader, Dataset, ThreadDataLoader
from monai.transforms import Compose

from medseg_attn.errors import UserError
from medseg_attn.io.files import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["RANK_SEED_STRIDE", "build_datasets", "rank_seed", "recorded_split", "seeded_loader"]

RANK_SEED_STRIDE = 1_000_003  # rank r draws from seed + r * stride (rank 0 alone: the single-process stream)


def recorded_split(split_file: Path, items: Sequence[dict[str, Any]], key: str, resume: bool, is_main: bool,
                   draw: Callable[[], tuple[list[dict], list[dict]]], record: dict[str, Any], source: str = "the data"
                   ) -> tuple[list[dict], list[dict]]:
    """Training and validation items: the ones in ``split_file`` when resuming, else ``draw()``'s, recorded.

    Args:
        split_file: ``RUN/split.json``.
        items: every item that may be drawn (dicts with a unique name under ``key``).
        key: the name field ("case", "name").
        resume: read the recorded split when the file exists.
        is_main: this process writes the record (rank 0 under torchrun).
        draw: draws a new split.
        record: what else the record says (seed, fraction, fold, ...).
        source: where the items come from, for the error message.

    Raises:
        ValueError: a recorded item is no longer in the data.
    """
    if resume and split_file.exists():
        saved = json.loads(split_file.read_text())
        by_name = {item[key]: item for item in items}
        try:
            return [by_name[n] for n in saved["train"]], [by_name[n] for n in saved["validation"]]
        except KeyError as error:
            raise UserError(f"{split_file}: {error} is no longer in {source}") from None
    train, val = draw()
    payload = {**record, "train": [item[key] for item in train], "validation": [item[key] for item in val]}
    if is_main:
        split_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(split_file, json.dumps(payload, indent=2))
    return train, val


def build_datasets(train_items: list[dict], val_items: list[dict], train_transform: Compose, val_transform: Compose,
                   cache: bool, progress: bool, validation: bool) -> tuple[Dataset, Dataset | None]:
    """MONAI datasets for training and validation; ``cache`` runs the deterministic transforms once
    (``CacheDataset``), the random ones every epoch.

    ``validation`` says whether the run validates at all (None for the validation dataset otherwise). Under DDP a
    rank's share of the validation items may be empty while the run validates: that rank still gets an (empty)
    dataset, so it joins every collective of the validation.
    """
    if cache:
        logger.info("caching %d training and %d validation items", len(train_items), len(val_items))
        train_ds: Dataset = CacheDataset(train_items, train_transform, cache_rate=1.0, progress=progress,
                                         num_workers=None)
        val_ds = CacheDataset(val_items, val_transform, progress=False) if validation else None
    else:
        train_ds = Dataset(train_items, train_transform)
        val_ds = Dataset(val_items, val_transform) if validation else None
    return train_ds, val_ds


def rank_seed(seed: int, rank: int) -> int:
    """The seed of one rank's stream for an epoch seed."""
    return (seed + RANK_SEED_STRIDE * rank) % (2**32)


def seeded_loader(dataset: Dataset, transform: Compose, seed: int, rank: int, batch_size: int, num_workers: int,
                  sampler_factory: Callable[[torch.Generator], torch.utils.data.Sampler] | None = None,
                  collate_fn: Callable | None = None, prefetch: bool = False, pin_memory: bool = False
                  ) -> DataLoader:
    """A loader for one epoch: the random transforms and the order (or ``sampler_factory(generator)``'s
    sampler) drawn from ``seed`` and the rank, so a resumed run draws exactly what the uninterrupted one did.

    With ``prefetch`` and no worker processes, MONAI's ``ThreadDataLoader`` prepares the next batch in a
    background thread while the network trains on this one (the same batches in the same order: one thread draws
    them in sequence). With ``pin_memory`` (training on CUDA) batches come in page-locked memory, so the
    ``.to(device, non_blocking=True)`` copies of the training step overlap with the GPU's work."""
    seed = rank_seed(seed, rank)
    transform.set_random_state(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    sampler = sampler_factory(generator) if sampler_factory is not None else None
    extra = {"collate_fn": collate_fn} if collate_fn is not None else {}
    if prefetch and num_workers == 0:
        extra["buffer_size"] = 1
        loader_class: type[DataLoader] = ThreadDataLoader
    else:
        loader_class = DataLoader
    return loader_class(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=num_workers, generator=generator, drop_last=False, pin_memory=pin_memory, **extra)
