"""Environment ids -> vector env constructors (one dispatch on ``cfg.id``, no plugin discovery).

Simulator modules are imported only when their id is asked for, so the structured task needs none of
their packages installed."""

from __future__ import annotations

from ..config import ENV_IDS, EnvConfig
from .structured import StructuredTaskSpec, StructuredTaskVectorEnv

__all__ = ["ENV_IDS", "make_env", "structured_spec"]


def structured_spec(cfg: EnvConfig) -> StructuredTaskSpec:
    return StructuredTaskSpec(
        action_dims=cfg.action_dims, num_bins=cfg.num_bins, horizon=cfg.horizon,
        dim_weights=list(cfg.dim_weights) if cfg.dim_weights is not None else None,
        pairs=[(p.i, p.j, p.weight) for p in cfg.pairs], noise_std=cfg.noise_std, max_move=cfg.max_move,
        goal_reach=cfg.goal_reach, terminate_on_success=cfg.terminate_on_success, num_goals=cfg.num_goals,
    )


def make_env(cfg: EnvConfig, num_envs: int, seed: int):
    """A gymnasium vector env of ``num_envs`` copies of ``cfg.id``."""
    if cfg.id == "structured":
        return StructuredTaskVectorEnv(structured_spec(cfg), num_envs, seed=seed, autoreset_mode=cfg.autoreset_mode,
                                       spec_seed=cfg.task_seed, observation=cfg.observation,
                                       image_size=cfg.image_size)
    if cfg.id == "metaworld":
        from .metaworld import MetaWorldVectorEnv

        return MetaWorldVectorEnv(cfg, num_envs, seed=seed)
    if cfg.id == "libero":
        from .libero import make_libero_env

        return make_libero_env(cfg, num_envs, seed)
    if cfg.id == "maniskill":
        from .maniskill import make_maniskill_env

        return make_maniskill_env(cfg, num_envs, seed)
    raise ValueError(f"unknown env id {cfg.id!r}; valid: {list(ENV_IDS)}")
