"""The one validation of every configuration value: a table of allowed ranges and choices, checked for both tasks.

:data:`RANGES` gives each numeric key its allowed interval (lists: every element), :data:`CHOICES` each string
key its allowed words. :func:`validate` walks every value of a built configuration (segmentation or
classification: the sections they share are the same keys, so they are checked by the same rows), refuses
non-finite numbers anywhere, and checks the rows of the table; :func:`check_depth` refuses a patch that the
network's downsampling would shrink to a single voxel. ``medseg_attn.config.loading.from_dict`` runs them before
any command does any work (training, prediction, evaluation, demos, checkpoints loaded for prediction).
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from dataclasses import dataclass
from typing import Any

from medseg_attn.config.sections import ConfigError

__all__ = ["BOOL_WORDS", "CHOICES", "CLASS_CHOICES", "OPTIONS", "RANGES", "Range", "check_depth", "shown", "validate"]


@dataclass(frozen=True)
class Range:
    """An allowed interval: ``low <= value <= high`` (``<`` where the end is open); None = unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def allows(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def describe(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


AT_LEAST_1 = Range(1)
AT_LEAST_0 = Range(0)
POSITIVE = Range(0, low_open=True)
PROBABILITY = Range(0, 1)
FRACTION = Range(0, 1, high_open=True)  # [0, 1)

# key -> allowed range; a list value (patch_size, channels ...) is checked element by element. Keys are the
# same for segmentation and classification where the sections share them.
RANGES: dict[str, Range] = {
    "data.spacing": Range(0, 1000, low_open=True),  # mm
    "data.image_size": Range(4, 65536),
    "data.samples_per_case": AT_LEAST_1,
    "data.foreground_fraction": PROBABILITY,
    "data.validation_fraction": FRACTION,
    "data.folds": AT_LEAST_0,
    "data.fold": AT_LEAST_0,
    "data.max_validation_cases": AT_LEAST_1,
    "data.num_workers": Range(0, 256),
    "data.preprocess_workers": Range(0, 1024),
    "data.augmentation.rotate_degrees": Range(0, 180),
    "data.augmentation.scale": FRACTION,
    "data.augmentation.affine_probability": PROBABILITY,
    "data.augmentation.flip_axes": Range(0, 2),
    "data.augmentation.intensity_probability": PROBABILITY,
    "data.augmentation.noise_std": AT_LEAST_0,
    "data.augmentation.brightness": FRACTION,
    "data.augmentation.contrast": FRACTION,
    "data.augmentation.gamma": Range(0.05, 20),
    "data.augmentation.inverted_gamma_probability": PROBABILITY,
    "data.augmentation.bias_field_probability": PROBABILITY,
    "data.augmentation.channel_dropout_probability": FRACTION,
    "data.augmentation.bias_field_coefficient": Range(0, 1),
    "data.augmentation.low_resolution_probability": PROBABILITY,
    "data.augmentation.low_resolution_zoom": Range(0.1, 1),
    "data.augmentation.background_mask_probability": PROBABILITY,
    "data.voxel_budget": Range(512),
    "model.channels": Range(1, 65536),
    "model.first_stride": Range(1, 2),
    "model.decoder_layers": Range(1, 2),
    "model.head_dim": AT_LEAST_1,
    "model.window_size": AT_LEAST_1,
    "model.global_levels": AT_LEAST_0,
    "model.global_max_tokens": AT_LEAST_1,
    "model.attention_pool": Range(1, 8),
    "model.attention_dropout": FRACTION,
    "model.head_layers": AT_LEAST_1,
    "model.hidden": AT_LEAST_1,
    "model.dropout": FRACTION,
    "model.segmentation_weight": AT_LEAST_0,
    "train.max_epochs": AT_LEAST_1,
    "train.minutes": POSITIVE,
    "train.steps_per_epoch": AT_LEAST_1,
    "train.batch_size": AT_LEAST_1,
    "train.lr": POSITIVE,
    "train.weight_decay": AT_LEAST_0,
    "train.momentum": FRACTION,
    "train.warmup_steps": AT_LEAST_0,
    "train.val_interval": AT_LEAST_1,
    "train.patience": AT_LEAST_1,
    "train.label_smoothing": FRACTION,
    "inference.overlap": FRACTION,
    "inference.sw_batch_size": AT_LEAST_1,
    "inference.patch_size": Range(8, 4096),
}

# string key -> allowed words (checked while the value is read, with a did-you-mean hint)
CHOICES: dict[str, tuple[str, ...]] = {
    "data.modality": ("auto", "ct", "mr"),
    "data.intensity": ("auto", "ct", "ct_window", "zscore", "none"),
    "data.prefetch": ("auto", "on", "off"),
    "data.cache": ("disk", "memory", "none"),
    "data.lesion_sampling": ("auto", "lesion", "voxel"),
    "model.architecture": ("attention_skip_unet", "monai_unet", "monai_attention_unet"),
    "model.norm": ("instance", "batch", "group"),
    "train.optimizer": ("adamw", "sgd"),
    "train.schedule": ("cosine", "poly", "constant"),
    "train.amp": ("auto", "on", "off"),
    "inference.blend": ("gaussian", "constant"),
    "inference.precision": ("auto", "fp32", "bf16", "fp16"),
}
# string keys that also take a boolean (the key's earlier form): key -> (word for true, word for false)
BOOL_WORDS: dict[str, tuple[str, str]] = {"data.cache": ("memory", "none")}
# choices that differ by task: section class name -> key -> words (checked before CHOICES)
CLASS_CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "ClassifyDataConfig": {"intensity": ("zscore", "scale", "minmax", "ct", "none"),
                           "color": ("auto", "grayscale", "rgb")},
    "ClassifyModelConfig": {"architecture": ("attention_skip_unet",), "pooling": ("class_token", "attention")},
    "ClassifyTrainConfig": {"balance": ("none", "sampler", "loss"),
                            "monitor": ("balanced_accuracy", "accuracy", "macro_f1", "auc", "loss")},
}

# the command-line option that sets a key, named in its error so a user knows what to change
OPTIONS = {"train.minutes": "--minutes", "train.max_epochs": "--epochs", "inference.sw_batch_size": "--sw-batch-size",
           "inference.overlap": "--overlap"}


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxtuple, _REPR.maxstring, _REPR.maxother = 3, 8, 8, 8, 60, 60


def _where(key: str) -> str:
    return f"{key} ({OPTIONS[key]})" if key in OPTIONS else key


def shown(value: Any) -> str:
    """``repr(value)`` cut to 80 characters: error messages never embed a huge value."""
    text = _REPR.repr(list(value) if isinstance(value, tuple) else value)  # bounded depth and width
    return text if len(text) <= 80 else text[:77] + "..."


def _check_value(key: str, value: Any) -> None:
    items = value if isinstance(value, tuple) else (value,)
    numbers = [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
        raise ConfigError(f"{_where(key)} must be a finite number, got {shown(value)}")
    allowed = RANGES.get(key)
    if allowed is not None:
        bad = [v for v in numbers if not allowed.allows(v)]
        if bad:
            each = "every element " if isinstance(value, tuple) else ""
            raise ConfigError(f"{_where(key)}: {each}must be {allowed.describe()}, got {shown(value)}")


def validate(section: Any, prefix: str = "") -> None:
    """Check every value of a configuration (recursively): finite numbers, and each :data:`RANGES` row.

    Raises:
        ConfigError: naming the key (and its command-line option), the allowed range and the value.
    """
    for spec in dataclasses.fields(section):
        value = getattr(section, spec.name)
        key = f"{prefix}{spec.name}"
        if dataclasses.is_dataclass(value):
            validate(value, f"{key}.")
        elif value is not None and not isinstance(value, (str, dict)):
            _check_value(key, value)


def check_depth(patch: tuple[int, ...], channels: tuple[int, ...], first_stride: int, where: str) -> None:
    """A patch the network shrinks to one voxel at its deepest level cannot be normalised: refuse it.

    The encoder divides each side by ``first_stride * 2 ** (levels - 1)`` (the input is padded up to a multiple
    of it); instance normalisation needs more than one voxel there.

    Raises:
        ConfigError: naming the patch, the depth and the smallest patch that works.
    """
    divisor = first_stride * 2 ** (len(channels) - 1)
    bottleneck = [max(1, -(-side // divisor)) for side in patch]
    if math.prod(bottleneck) < 2:
        raise ConfigError(f"{where} {list(patch)} is too small for model.channels {list(channels)} (first_stride "
                          f"{first_stride}): the bottleneck (deepest level) would be {bottleneck} voxels; use a side "
                          f"above {divisor} or fewer levels")
