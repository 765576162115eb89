"""Loading configs: a recipe YAML merged strictly onto the dataclasses (OmegaConf structured configs), then
``key.sub=value`` overrides; an unknown key fails with its name and the nearest valid key (TRL #3543: silent
typos cost runs). Also the resolved YAML every run saves, configs saved by older versions, and the field docs."""

from __future__ import annotations

import ast
import inspect
import os
from dataclasses import fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .choices import ConfigError
from .choices import nearest_hint as _nearest_hint
from .env import MOVED_ENV_KEYS, EnvConfig
from .run import TrainConfig

__all__ = ["apply_overrides", "config_from_yaml_text", "explicit_settings", "field_docs", "load_config",
           "merge_settings", "to_yaml"]


def _check_keys(node: Any, schema: type, prefix: str, source: str) -> None:
    """Unknown keys fail with the full key and the nearest valid one (TRL #3543: silent typos)."""
    if not isinstance(node, (dict, DictConfig)):
        return
    known = {f.name: f for f in fields(schema)}
    for key, value in node.items():
        full = f"{prefix}{key}"
        if key not in known and prefix == "env." and key in MOVED_ENV_KEYS:
            where = [f"env.{s}.{key}" for s in MOVED_ENV_KEYS[key]]
            raise ConfigError(f"{source}: {full!r} moved to {' or '.join(where)} (each environment's settings "
                              "live in its own section); rename the key")
        if key not in known:
            options = [f"{prefix}{k}" for k in known]
            raise ConfigError(f"{source}: unknown key {full!r}{_nearest_hint(full, options)} "
                              f"(valid keys here: {', '.join(known)})")
        sub = _dataclass_of(schema, key)
        if sub is not None and isinstance(value, (dict, DictConfig)):
            _check_keys(value, sub, f"{full}.", source)
        elif sub is not None and isinstance(value, (list, ListConfig)):
            for n, item in enumerate(value):
                _check_keys(item, sub, f"{full}[{n}].", source)


def _dataclass_of(schema: type, name: str) -> type | None:
    """The dataclass type of field ``name`` (also inside ``List[...]``), or None."""
    hints = _type_hints(schema)
    tp = hints.get(name)
    if is_dataclass(tp):
        return tp
    for arg in getattr(tp, "__args__", ()) or ():
        if is_dataclass(arg):
            return arg
    return None


@cache
def _type_hints(schema: type) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(schema)


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        msg = str(err).splitlines()[0]
        raise ConfigError(f"{source}: bad value for {key!r}: {msg}") from None


def load_config(recipe: str | os.PathLike | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Recipe YAML (optional) + ``a.b=c`` overrides -> a validated :class:`TrainConfig`."""
    merged = OmegaConf.structured(TrainConfig)
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            here = sorted(str(p) for p in Path("recipes").rglob("*.yaml")) if Path("recipes").is_dir() else []
            hint = f" Recipes here: {', '.join(here[:12])}" if here else ""
            raise ConfigError(f"recipe file not found: {str(path)!r}.{hint}")
        try:
            data = OmegaConf.load(path)
        except Exception as err:  # yaml syntax errors
            raise ConfigError(f"{path}: cannot parse YAML: {err}") from None
        if not isinstance(data, DictConfig):
            raise ConfigError(f"{path}: a recipe must be a YAML mapping of keys, got {type(data).__name__}")
        if not data:  # an empty file would train for minutes on nothing but defaults
            raise ConfigError(f"{path}: the recipe sets nothing; write the run's settings into it (see "
                              "recipes/structured/quickstart.yaml) or give no recipe and key=value overrides")
        _check_keys(data, TrainConfig, "", str(path))
        merged = _merge(merged, data, str(path))
    merged = _merge_overrides(merged, overrides or [], "")
    try:
        cfg: TrainConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise ConfigError(f"incomplete config: {str(err).splitlines()[0]}") from None
    return _fill_defaults(cfg.validate())


def _fill_defaults(cfg: TrainConfig) -> TrainConfig:
    """Defaults that follow another key, written out so the resolved config.yaml shows the value used."""
    if cfg.env.id == "gym" and cfg.env.gym.reward_gamma is None:
        cfg.env.gym.reward_gamma = cfg.ppo.gamma
    if cfg.logging.tensorboard is not None:  # the older spelling, folded into report_to
        names = [n for n in cfg.logging.report_to if n not in ("tensorboard", "none")]
        cfg.logging.report_to = (["tensorboard"] + names) if cfg.logging.tensorboard else (names or ["none"])
        cfg.logging.tensorboard = None
    return cfg


def _merge_overrides(merged: DictConfig, overrides: list[str] | tuple[str, ...], source: str) -> DictConfig:
    """``key.sub=value`` items merged strictly: unknown keys name the nearest valid one."""
    prefix = f"{source} " if source else ""
    for item in overrides:
        if item.endswith((".yaml", ".yml")) and "=" not in item:
            raise ConfigError(f"{item!r} looks like a recipe after the overrides: the recipe comes first "
                              f"(vla-structppo VERB {item} key.sub=value ...)")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        if item.endswith("=") and item.count("=") == 1:
            raise ConfigError(f"override {item!r} gives no value: write {item}VALUE")
        key, _ = item.split("=", 1)
        try:
            dot = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as err:
            raise ConfigError(f"override {item!r}: {err}") from None
        _check_keys(dot, TrainConfig, "", f"{prefix}override {key}")
        merged = _merge(merged, dot, f"{prefix}override {item!r}")
    return merged


def explicit_settings(recipe: str | os.PathLike | None, overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Only the keys the recipe and the overrides set, as a nested dict (no defaults filled in): what a
    user asked for explicitly, e.g. the env an evaluation must run on whatever the checkpoint says.
    Call it after :func:`load_config` has accepted the same recipe and overrides."""
    tree = OmegaConf.load(recipe) if recipe is not None else OmegaConf.create({})
    for item in overrides:
        tree = OmegaConf.merge(tree, OmegaConf.from_dotlist([item]))
    return OmegaConf.to_container(tree, resolve=True)  # type: ignore[return-value]


def merge_settings(section: Any, settings: dict[str, Any], name: str) -> Any:
    """``section`` (a config dataclass such as a checkpoint's ``EnvConfig``) with ``settings`` (a nested
    dict of its keys) merged on top, strictly; an ``EnvConfig`` is checked again."""
    if not settings:
        return section
    _check_keys(settings, type(section), f"{name}.", "override")
    merged = OmegaConf.to_object(_merge(OmegaConf.structured(section), settings, name))
    problems = merged.problems() if isinstance(merged, EnvConfig) else []
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
    return merged


def apply_overrides(cfg: TrainConfig, overrides: list[str] | tuple[str, ...], source: str = "") -> TrainConfig:
    """``key.sub=value`` overrides on an existing config (e.g. a checkpoint's), validated."""
    if not overrides:
        return cfg
    return _fill_defaults(OmegaConf.to_object(_merge_overrides(OmegaConf.structured(cfg), overrides, source)).validate())  # type: ignore[union-attr]


def to_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML (saved with every run; ``vla-structppo config`` prints it)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_from_yaml_text(text: str) -> TrainConfig:
    """Strictly rebuild a config saved by :func:`to_yaml` (checkpoints; older layouts are migrated)."""
    data = _migrate_saved(OmegaConf.create(text))
    _check_keys(data, TrainConfig, "", "saved config")
    return _fill_defaults(OmegaConf.to_object(_merge(OmegaConf.structured(TrainConfig), data, "saved config")).validate())  # type: ignore[union-attr]


def _migrate_saved(data: DictConfig) -> DictConfig:
    """A config saved before ``env`` was split per environment: each moved key goes into the section of
    the run's own ``env.id`` when it belongs there, and is dropped otherwise (it had no effect then)."""
    env = data.get("env") if isinstance(data, DictConfig) else None
    if not isinstance(env, DictConfig) or not any(k in env for k in MOVED_ENV_KEYS):
        return data
    env_id = env.get("id", EnvConfig.id)
    for key in [k for k in env if k in MOVED_ENV_KEYS]:
        value = env.pop(key)
        if env_id in MOVED_ENV_KEYS[key]:
            if env_id not in env:
                env[env_id] = {}
            env[env_id][key] = value
    return data


@cache
def field_docs(schema: type = TrainConfig) -> dict[str, str]:
    """``{"ppo.clip_coef": "PPO clip epsilon.", ...}`` from the docstring under each field."""
    docs: dict[str, str] = {}
    tree = ast.parse(inspect.getsource(schema))
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = str(nxt.value.value)  # type: ignore[attr-defined]
    for f in fields(schema):
        sub = _dataclass_of(schema, f.name)
        if sub is not None:
            for k, v in field_docs(sub).items():
                docs[f"{f.name}.{k}"] = v
    return docs
