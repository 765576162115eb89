"""Typed run configuration: the single source of defaults (STYLE.md rule 3).

Recipes are YAML files merged strictly onto these dataclasses (OmegaConf structured configs), then ``key.sub=value``
overrides; an unknown key or a wrong type fails with the key's name and the nearest valid key, and
:meth:`TrainConfig.validate` lists every setting that cannot run. Nothing here imports torch: a bad recipe fails
before anything heavy loads.

One module per concern, each section a dataclass with a docstring under every field and a ``problems()`` that
checks it (and the combinations it takes part in):

* choices.py -- the allowed values of the choice fields, ``ConfigError`` and the checks' helpers;
* env.py -- ``env`` and each environment's section (``env.structured``, ``env.metaworld`` ...);
* model.py -- ``policy``, ``model``, ``model.lora``;
* training.py -- ``ppo``, ``head``, ``credit``, ``action``, ``advantage``, ``rollout``;
* data.py -- ``sft``, ``demos``, ``eval``;
* run.py -- ``TrainConfig`` (the run's own fields, one field per section, derived sizes, ``validate``) and ``logging``;
* load.py -- recipes and overrides in, the resolved YAML out, older saved configs migrated, the field docs.

A new section is one dataclass with its ``problems(cfg)`` in the module of its concern and one field on
``TrainConfig`` (``validate`` asks every section field for its problems).
"""

from .choices import (
    BASELINE_SCALES,
    CENTERINGS,
    CREDIT_MODES,
    ENV_IDS,
    HEAD_MODES,
    HORIZON_ENDS,
    POLICY_TYPES,
    RATIOS,
    TRACKERS,
    VALUE_NETWORKS,
    ConfigError,
)
from .data import DemosConfig, EvalConfig, SFTConfig
from .env import (
    MOVED_ENV_KEYS,
    EnvConfig,
    GymEnvConfig,
    LiberoEnvConfig,
    ManiSkillEnvConfig,
    MetaWorldEnvConfig,
    PairConfig,
    StructuredEnvConfig,
)
from .load import (
    _dataclass_of,  # noqa: F401 - tests read it (tests/test_config.py)
    apply_overrides,
    config_from_yaml_text,
    explicit_settings,
    field_docs,
    load_config,
    merge_settings,
    to_yaml,
)
from .model import LoraConfig, ModelConfig, PolicyConfig
from .run import LoggingConfig, TrainConfig
from .training import ActionConfig, AdvantageConfig, CreditConfig, HeadConfig, PPOConfig, RolloutConfig

__all__ = [
    "BASELINE_SCALES", "CENTERINGS", "CREDIT_MODES", "ENV_IDS", "HEAD_MODES", "HORIZON_ENDS", "MOVED_ENV_KEYS",
    "POLICY_TYPES", "RATIOS", "TRACKERS", "VALUE_NETWORKS", "ActionConfig", "AdvantageConfig", "ConfigError",
    "CreditConfig", "DemosConfig", "EnvConfig", "EvalConfig", "GymEnvConfig", "HeadConfig", "LiberoEnvConfig",
    "LoggingConfig", "LoraConfig", "ManiSkillEnvConfig", "MetaWorldEnvConfig", "ModelConfig", "PPOConfig",
    "PairConfig", "PolicyConfig", "RolloutConfig", "SFTConfig", "StructuredEnvConfig", "TrainConfig",
    "apply_overrides", "config_from_yaml_text", "explicit_settings", "field_docs", "load_config", "merge_settings",
    "to_yaml",
]
