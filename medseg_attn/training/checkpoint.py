"""Checkpoints: atomic save (temporary file, then rename) and safe load (``weights_only=True``).

On disk a checkpoint is a plain dict of tensors and builtins, so it loads without unpickling code;
:func:`load_checkpoint` returns it as a :class:`Checkpoint`, which names every key training writes as a typed
attribute.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
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


@dataclass(frozen=True)
class Checkpoint(Mapping[str, Any]):
    """A checkpoint as read: the saved dict, read-only, with an attribute per key training writes; a key an older
    checkpoint lacks reads as None (or as an empty dict, list or 0). A task's own keys are read as a mapping
    (``checkpoint["features"]``); ``{**checkpoint, key: value}`` is a dict to save again.

    Written by :func:`medseg_attn.training.loop.fit`: ``model``, ``optimizer``, ``scaler`` (state dicts), the
    :class:`~medseg_attn.training.state.TrainState` fields, ``world_size``, ``versions``; by the task (its
    ``TrainTask.payload``): ``task``, ``config``, ``labels``, ``colors``, ``preprocessing``, ``in_channels``,
    ``card``, and segmentation's ``plan`` and ``training_fingerprint`` or classification's ``classes`` and
    ``segmentation_classes``; after training, ``calibration`` (segmentation's temperature).
    """

    saved: Mapping[str, Any]

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
    def format(self) -> str | None:
        return self.saved.get("format")

    @property
    def version(self) -> int:
        return self.saved.get("version", 0)

    @property
    def task(self) -> str | None:
        return self.saved.get("task")

    @property
    def model(self) -> dict[str, torch.Tensor]:
        """The network's state dict (a KeyError where missing: nothing to rebuild)."""
        return self.saved["model"]

    @property
    def optimizer(self) -> dict[str, Any] | None:
        return self.saved.get("optimizer")

    @property
    def scaler(self) -> dict[str, Any] | None:
        return self.saved.get("scaler")

    @property
    def epoch(self) -> int | None:
        return self.saved.get("epoch")

    @property
    def step(self) -> int | None:
        return self.saved.get("step")

    @property
    def elapsed_seconds(self) -> float | None:
        return self.saved.get("elapsed_seconds")

    @property
    def best_metric(self) -> float | None:
        return self.saved.get("best_metric")

    @property
    def best_epoch(self) -> int | None:
        return self.saved.get("best_epoch")

    @property
    def bad_validations(self) -> int | None:
        return self.saved.get("bad_validations")

    @property
    def world_size(self) -> int | None:
        return self.saved.get("world_size")

    @property
    def versions(self) -> dict[str, str]:
        return self.saved.get("versions") or {}

    @property
    def config(self) -> dict[str, Any]:
        """The config as a dict (:func:`upgrade_config` applied)."""
        return self.saved.get("config") or {}

    @property
    def labels(self) -> dict[int, str]:
        """Class index -> name."""
        return {int(k): str(v) for k, v in (self.saved.get("labels") or {}).items()}

    @property
    def colors(self) -> dict[Any, Any]:
        return self.saved.get("colors") or {}

    @property
    def preprocessing(self) -> dict[str, Any]:
        return self.saved.get("preprocessing") or {}

    @property
    def in_channels(self) -> int | None:
        return self.saved.get("in_channels")

    @property
    def card(self) -> dict[str, Any]:
        return self.saved.get("card") or {}

    @property
    def calibration(self) -> dict[str, Any]:
        return self.saved.get("calibration") or {}

    @property
    def plan(self) -> dict[str, Any] | None:
        return self.saved.get("plan")

    @property
    def training_fingerprint(self) -> Any:
        return self.saved.get("training_fingerprint")

    @property
    def classes(self) -> list[str]:
        return [str(name) for name in self.saved.get("classes") or []]

    @property
    def segmentation_classes(self) -> int:
        return int(self.saved.get("segmentation_classes", 0))


def upgrade_config(config: Any) -> Any:
    """A saved config dict as this version reads it: options added since keep the behaviour the model was
    trained with (``model.attention_pool`` absent = every level attended voxel by voxel, the weights have the
    same shapes either way). Returns the dict, changed in place."""
    model = config.get("model") if isinstance(config, dict) else None
    if isinstance(model, dict) and "attention_pool" not in model:
        model["attention_pool"] = []
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
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a medseg-attn checkpoint (no '{CHECKPOINT_FORMAT}' format tag)")
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise UserError(f"{path}: checkpoint format version {payload['version']} is newer than this "
                         f"medseg-attn understands ({CHECKPOINT_VERSION}); upgrade medseg-attn")
    upgrade_config(payload.get("config"))
    return Checkpoint(payload)
