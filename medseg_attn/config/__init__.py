"""Run configuration: frozen dataclasses loaded from YAML, with ``--set key=value`` overrides.

Every key has a default, so an empty file (or no file) is a valid configuration. Unknown keys are errors that
suggest the closest known key, and the resolved configuration is saved with every run and checkpoint.
"""

from medseg_attn.config.loading import (
    ClassifyConfig,
    Config,
    apply_overrides,
    differing_keys,
    from_dict,
    load_config,
    parse_override,
    read_yaml,
    save_config,
)
from medseg_attn.config.sections import (
    AugmentationConfig,
    ClassifyDataConfig,
    ClassifyModelConfig,
    ClassifyTrainConfig,
    ConfigError,
    DataConfig,
    InferenceConfig,
    ModelConfig,
    TrainConfig,
)

__all__ = [
    "AugmentationConfig",
    "ClassifyConfig",
    "ClassifyDataConfig",
    "ClassifyModelConfig",
    "ClassifyTrainConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "InferenceConfig",
    "ModelConfig",
    "TrainConfig",
    "apply_overrides",
    "differing_keys",
    "from_dict",
    "load_config",
    "parse_override",
    "read_yaml",
    "save_config",
]
