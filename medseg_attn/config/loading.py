"""Loading configurations: YAML and ``--set`` overrides -> frozen dataclasses, with did-you-mean errors and
one validation of every value (ranges and choices) before any work."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from medseg_attn.config import sections
from medseg_attn.config.bounded_yaml import safe_load_bounded
from medseg_attn.config.sections import ConfigError, TrainConfig
from medseg_attn.config.validation import BOOL_WORDS, CHOICES, CLASS_CHOICES, check_depth, shown, validate

__all__ = ["ClassifyConfig", "Config", "apply_overrides", "check_known_keys", "differing_keys", "from_dict",
           "load_config", "parse_override", "read_yaml", "save_config"]


class _Sections:
    """Shared behaviour of the top-level configurations (a run's whole YAML file)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of builtins (lists, not tuples), safe for YAML, JSON and ``weights_only`` checkpoints."""
        return _plain(dataclasses.asdict(self))  # type: ignore[call-overload]

    def replace(self, **sections: dict[str, Any]):
        """A copy with some keys of some sections changed, e.g. ``cfg.replace(train={"lr": 1e-3})``."""
        return from_dict(_merge(self.to_dict(), sections), type(self))


@dataclass(frozen=True)
class Config(_Sections):
    """The whole run configuration (segmentation)."""

    data: sections.DataConfig = field(default_factory=sections.DataConfig)
    model: sections.ModelConfig = field(default_factory=sections.ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: sections.InferenceConfig = field(default_factory=sections.InferenceConfig)


@dataclass(frozen=True)
class ClassifyConfig(_Sections):
    """The whole run configuration (classification)."""

    data: sections.ClassifyDataConfig = field(default_factory=sections.ClassifyDataConfig)
    model: sections.ClassifyModelConfig = field(default_factory=sections.ClassifyModelConfig)
    train: sections.ClassifyTrainConfig = field(default_factory=sections.ClassifyTrainConfig)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def differing_keys(old: Any, new: Any, skip: Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every key where two config sections (dataclasses of one kind) differ, lists
    and tuples compared alike, keys in ``skip`` left out; values as plain builtins."""
    before, after = _plain(dataclasses.asdict(old)), _plain(dataclasses.asdict(new))
    return [(key, before[key], value) for key, value in after.items() if key not in skip and before[key] != value]


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "labels":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _convert(value: Any, annotation: str, where: str, choices: tuple[str, ...] | None = None) -> Any:
    """Check and convert one YAML value against its dataclass annotation (given as a string)."""
    if value is None:
        if "None" in annotation:
            return None
        raise ConfigError(f"{where} may not be null (expected {annotation})")
    if "str" in annotation and not annotation.startswith("str") and isinstance(value, str):
        if value != "auto":
            kinds = {"int": "an integer", "float": "a number", "bool": "true or false", "tuple": "a list"}
            kind = next((text for key, text in kinds.items() if annotation.startswith(key)), annotation)
            raise ConfigError(f"{where} must be {kind} or 'auto', got {shown(value)}")
        return value  # e.g. spacing: auto, patch_size: auto (planned), batch_size: auto
    if annotation.startswith("tuple"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {shown(value)}")
        kind = int if "tuple[int" in annotation else float
        try:
            return tuple(kind(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a list of {kind.__name__}, got {shown(value)}") from None
    if annotation.startswith("dict"):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping like {{0: background, 1: organ}}, got {shown(value)}")
        try:
            return {int(k): str(v) for k, v in value.items()}
        except (TypeError, ValueError):
            raise ConfigError(f"{where} keys must be integer class indices, got {list(value)}") from None
    if annotation.startswith("bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {shown(value)}")
        return value
    if annotation.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{where} must be an integer, got {shown(value)}")
        return int(value)
    if annotation.startswith("float"):
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {shown(value)}")
        return float(value)
    if annotation.startswith("str"):
        choices = choices or CHOICES.get(where)
        if isinstance(value, bool) and choices and {"on", "off"} <= set(choices):
            value = "on" if value else "off"  # YAML 1.1 reads an unquoted on / off (and yes / no) as a boolean
        if isinstance(value, bool) and where in BOOL_WORDS:
            value = BOOL_WORDS[where][0 if value else 1]
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {shown(value)}")
        if choices and value not in choices:
            hint = difflib.get_close_matches(value, choices, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"{where}: {shown(value)} is not one of {', '.join(choices)}{suggestion}")
        return value
    return value


def check_known_keys(keys: Iterable[Any], known: Iterable[str], what: str, where: str = "", prefix: str = "",
                     cutoff: float = 0.6) -> None:
    """Raise :class:`ConfigError` for the first of ``keys`` that is not ``known``, naming the closest known one.

    The message: ``"{where}: unknown {what} '{prefix}{key}'; did you mean '{prefix}{closest}'?"`` (``where: ``
    only when given), or ``...; known: a, b, c`` when no known name is within ``cutoff``
    (:func:`difflib.get_close_matches`). Used by the config loader and the review settings.
    """
    names = sorted(known)
    for key in keys:
        if key not in names:
            close = difflib.get_close_matches(f"{prefix}{key}", [f"{prefix}{name}" for name in names], n=1,
                                              cutoff=cutoff)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(names)}"
            named = f"{prefix}{key}" if prefix else key
            raise ConfigError(f"{where + ': ' if where else ''}unknown {what} {named!r}{hint}")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {shown(values)}")
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        where = f"{prefix}{key}"
        check_known_keys([key], known, "config key", prefix=prefix, cutoff=0.5)
        spec = known[key]
        sub = spec.default_factory if spec.default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            if value is not None and not isinstance(value, dict):
                example = next(iter(f.name for f in fields(sub)))
                raise ConfigError(f"{where} is a section, not a value (got {shown(value)}); set one of its keys, "
                                  f"e.g. {where}.{example}=...")
            kwargs[key] = _build(sub, value or {}, f"{where}.")
        else:
            kwargs[key] = _convert(value, str(spec.type), where, CLASS_CHOICES.get(cls.__name__, {}).get(key))
    return cls(**kwargs)


def from_dict(values: dict[str, Any] | None, kind: type = Config) -> Any:
    """Build a :class:`Config` (or ``kind``, e.g. :class:`ClassifyConfig`) from nested dicts, checking every key
    and value."""
    config = _build(kind, values or {}, "")
    _check_common(config)
    if isinstance(config, ClassifyConfig):
        _check_classify(config)
    else:
        _check(config)
    return config


def _check_common(config: Config | ClassifyConfig) -> None:
    """Every value against its range (:mod:`medseg_attn.config.validation`), then what ties keys together."""
    validate(config)
    data, model = config.data, config.model
    if data.ct_window[0] >= data.ct_window[1]:
        raise ConfigError(f"data.ct_window must be [low, high] with low < high, got {list(data.ct_window)}")
    if len(model.channels) < 2:
        raise ConfigError(f"model.channels needs at least 2 levels, got {list(model.channels)}")
    for width in model.channels:  # attention splits each level's channels into max(1, C // head_dim) heads
        heads = max(1, width // model.head_dim)
        if width % heads:
            raise ConfigError(f"model.head_dim={model.head_dim}: a level of {width} channels would split into {heads} "
                              f"heads of {width / heads:.3g} channels; choose a head_dim that divides every "
                              f"model.channels entry {list(model.channels)} (e.g. 8 or 16)")


def _check_classify(config: ClassifyConfig) -> None:
    data, model = config.data, config.model
    if data.image_size is not None and len(data.image_size) not in (2, 3):
        raise ConfigError(f"data.image_size must have 2 or 3 sides of at least 4 pixels, got {list(data.image_size)}")
    if model.deep_supervision:
        raise ConfigError("model.deep_supervision is a segmentation setting; it is not supported for classification")
    if data.image_size is not None:
        check_depth(data.image_size, model.channels, model.first_stride, "data.image_size")


def _check(config: Config) -> None:
    data, model, inference = config.data, config.model, config.inference
    planned = isinstance(data.patch_size, str)  # patch_size: auto (the plan picks it at training)
    if not planned and (len(data.patch_size) not in (2, 3) or min(data.patch_size) < 8):
        raise ConfigError(f"data.patch_size must have 2 or 3 sides of at least 8 voxels, got {list(data.patch_size)}")
    if isinstance(data.spacing, str) and data.spacing != "auto":
        raise ConfigError(f"data.spacing must be 'auto', null or a list of mm, got {data.spacing!r}")
    sides = (2, 3) if planned else (len(data.patch_size),)
    if isinstance(data.spacing, tuple) and len(data.spacing) not in (1, *sides):
        raise ConfigError(f"data.spacing {list(data.spacing)} has {len(data.spacing)} values but data.patch_size "
                          f"{list(data.patch_size) if not planned else 'auto'} has {' or '.join(map(str, sides))} "
                          f"sides; give both for the same axes")
    if data.folds == 1 or (data.folds > 1 and not 0 <= data.fold < data.folds):
        raise ConfigError(f"data.folds={data.folds}, data.fold={data.fold}: need folds >= 2 and 0 <= fold < folds")
    if inference.patch_size is not None and not planned and len(inference.patch_size) != len(data.patch_size):
        raise ConfigError(f"inference.patch_size {list(inference.patch_size)} must have as many sides as "
                          f"data.patch_size {list(data.patch_size)}")
    stride = model.first_stride if model.architecture == "attention_skip_unet" else 1
    if not planned:
        check_depth(data.patch_size, model.channels, stride, "data.patch_size")
    if inference.patch_size is not None:
        check_depth(inference.patch_size, model.channels, stride, "inference.patch_size")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.lr=1e-3'`` -> (['train', 'lr'], 0.001); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value (e.g. train.lr=0.001), got {text!r}")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = safe_load_bounded(raw, f"--set {key.strip()}") if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(values: dict[str, Any], overrides: list[str], literals: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested dict, then ``literals``
    (``{"data.dataset": "2024"}``: taken as they are, e.g. paths from the command line, never parsed as YAML).
    Validation happens in :func:`from_dict`."""
    values = _merge({}, values)
    pairs = [parse_override(text) for text in overrides]
    pairs += [([part for part in key.split(".") if part], value) for key, value in (literals or {}).items()]
    for path, value in pairs:
        node = values
        for part in path[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[path[-1]] = value
    return values


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        values = safe_load_bounded(path.read_text(errors="replace"), str(path)) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, model, train[, inference])")
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, kind: type = Config,
                literals: dict[str, Any] | None = None) -> Any:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``--set`` overrides.

    ``kind`` is :class:`Config` (segmentation, the default) or :class:`ClassifyConfig`; ``literals`` are
    ``{key: value}`` set as they are (see :func:`apply_overrides`).

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: unknown key (with a suggestion), wrong type, or an out-of-range value; the message names
            the file.
    """
    if path is not None:  # a file, or the name of a shipped config ('ct_spleen')
        from medseg_attn.config.shipped import resolve_config_path

        path = resolve_config_path(path)
    values = read_yaml(path) if path is not None else {}
    values = apply_overrides(values, overrides or [], literals)
    try:
        return from_dict(values, kind)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}" if path is not None else str(error)) from None


def save_config(config: Config | ClassifyConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from medseg_attn.io.files import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))
