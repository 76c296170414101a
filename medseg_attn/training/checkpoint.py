"""Checkpoints: atomic save (temporary file, then rename) and safe load (``weights_only=True``).

On disk a checkpoint is a plain dict of tensors and builtins, so it loads without unpickling code;
:func:`load_checkpoint` returns it as a :class:`Checkpoint`, which names every key written as an attribute.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medseg_attn.errors import UserError
from medseg_attn.io.files import atomic_write
from medseg_attn.io.model_files import sniff_model, wrong_model_message

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "save_checkpoint", "load_checkpoint", "upgrade_config"]

CHECKPOINT_FORMAT = "medseg-attn-checkpoint"
CHECKPOINT_VERSION = 1


def _saved(key: str, empty: Callable[[], Any] | None = None) -> Any:
    """A read-only attribute of a :class:`Checkpoint`: its saved ``key``; where an older checkpoint lacks the key
    (or holds an empty value), None, or ``empty()`` when given."""
    if empty is None:
        return property(lambda checkpoint: checkpoint.saved.get(key))
    return property(lambda checkpoint: checkpoint.saved.get(key) or empty())


@dataclass(frozen=True)
class Checkpoint(Mapping[str, Any]):
    """A checkpoint as read: the saved dict, read-only, with an attribute per key written (THE list of them). A
    task's own keys are read as a mapping (``checkpoint["features"]``); ``{**checkpoint, key: value}`` is a dict
    to save again.
    """

    saved: Mapping[str, Any]

    format = _saved("format")  # str: CHECKPOINT_FORMAT
    version = _saved("version", int)  # int: CHECKPOINT_VERSION when written (0: before the tag)
    # written by training.loop.fit: state dicts, TrainState's fields, the processes and the versions
    optimizer = _saved("optimizer")  # dict | None
    scaler = _saved("scaler")  # dict | None: the AMP loss scaler's (absent in older checkpoints)
    epoch = _saved("epoch")  # int: epochs completed
    step = _saved("step")  # int: optimizer steps taken
    elapsed_seconds = _saved("elapsed_seconds")  # float: wall-clock seconds used
    best_metric = _saved("best_metric")  # float | None: the best validation value so far
    best_epoch = _saved("best_epoch")  # int | None: its epoch
    bad_validations = _saved("bad_validations")  # int: validations in a row without improvement
    world_size = _saved("world_size")  # int: processes of the run (torchrun)
    versions = _saved("versions", dict)  # dict[str, str]: package versions
    # written by the task (its TrainTask.payload)
    task = _saved("task")  # str | None: the task's name (None: segmentation's, older than the tag)
    config = _saved("config", dict)  # dict: the config as a dict (upgrade_config applied)
    colors = _saved("colors", dict)  # dict: class index -> RGB
    preprocessing = _saved("preprocessing", dict)  # dict: the task's preprocessing
    in_channels = _saved("in_channels")  # int: input channels
    card = _saved("card", dict)  # dict: training_card()'s data summary, command, time, versions
    plan = _saved("plan")  # dict | None: segmentation's plan (Plan.checkpoint_dict())
    training_fingerprint = _saved("training_fingerprint")  # segmentation's QC features of the training cases
    calibration = _saved("calibration", dict)  # dict: segmentation's temperature, written after training
    regions = _saved("regions")  # dict | None: segmentation's regions (Regions.to_dict()); None: softmax classes
    lesion_structures = _saved("lesion_structures")  # list[str] | None: segmentation's lesion classes (dataset.json)
    channel_names = _saved("channel_names")  # list[str] | None: the input channels' names (dataset.json)

    @classmethod
    def of(cls, saved: Mapping[str, Any]) -> Checkpoint:
        """``saved`` as a checkpoint (itself when it is one already)."""
        return saved if isinstance(saved, Checkpoint) else cls(saved)

    def __getitem__(self, key: str) -> Any:
        return self.saved[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.saved)

    def __len__(self) -> int:
        return len(self.saved)

    @property
    def model(self) -> dict[str, torch.Tensor]:
        """The network's state dict (a KeyError where missing: nothing to rebuild)."""
        return self.saved["model"]

    @property
    def labels(self) -> dict[int, str]:
        """Class index -> name."""
        return {int(k): str(v) for k, v in (self.saved.get("labels") or {}).items()}

    @property
    def classes(self) -> list[str]:
        """Classification's class names, in order."""
        return [str(name) for name in self.saved.get("classes") or []]

    @property
    def segmentation_classes(self) -> int:
        """Classification's classes of its segmentation head (0: none)."""
        return int(self.saved.get("segmentation_classes", 0))


def upgrade_config(config: Any) -> Any:
    """A saved config dict as this version reads it: options added since keep the behaviour the model was
    trained with (``model.attention_pool`` absent = every level attended voxel by voxel, the weights have the
    same shapes either way). Returns the dict, changed in place."""
    model = config.get("model") if isinstance(config, dict) else None
    if isinstance(model, dict) and "attention_pool" not in model:
        model["attention_pool"] = []
    if isinstance(model, dict) and "decoder_layers" not in model:
        model["decoder_layers"] = 2
    return config


def save_checkpoint(payload: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``payload`` (plus format tags) atomically to ``path``."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a medseg-attn checkpoint with ``torch.load(..., weights_only=True)`` (never unpickles code).

    Raises:
        ValueError: unreadable file, or not a medseg-attn checkpoint; the message names the file.
    """
    path = Path(path)
    kind = sniff_model(path)
    if kind in ("torchscript", "onnx", "other"):  # never handed to torch.load: one line that says what it is
        raise UserError(wrong_model_message(path, kind, "a checkpoint"))
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError ... for bad files
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        if any("Weights only load failed" in line or "WeightsUnpickler" in line for line in lines):
            # never pass on PyTorch's advice to retry with weights_only=False: that would run the file's code
            found = [line for line in lines if "GLOBAL" in line.upper() and "weights_only" not in line]
            what = f" ({found[0][:160]})" if found else ""
            raise UserError(f"{path}: refused: the file holds Python objects beyond plain weights{what}; "
                             f"medseg-attn checkpoints never do, so it was not written by medseg-attn") from None
        reason = (lines or [type(error).__name__])[0]
        raise UserError(f"{path}: not a loadable checkpoint ({reason[:200]})") from None
    checkpoint = Checkpoint(payload if isinstance(payload, dict) else {})
    if checkpoint.format != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a medseg-attn checkpoint (no '{CHECKPOINT_FORMAT}' format tag)")
    if checkpoint.version > CHECKPOINT_VERSION:
        raise UserError(f"{path}: checkpoint format version {checkpoint.version} is newer than this "
                         f"medseg-attn understands ({CHECKPOINT_VERSION}); upgrade medseg-attn")
    upgrade_config(checkpoint.config)
    return checkpoint
