"""The one env registry: ``env.id`` -> how to build its vector env and which tasks ``env.task`` names.

Simulator modules are imported only when their id is asked for, so the structured task needs none of
their packages installed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ..config import ENV_IDS, EnvConfig
from .chunking import ChunkedVectorEnv
from .structured import StructuredTaskSpec, StructuredTaskVectorEnv

__all__ = ["ENV_IDS", "make_env", "structured_spec", "tasks_of"]


def structured_spec(cfg: EnvConfig) -> StructuredTaskSpec:
    s = cfg.structured
    return StructuredTaskSpec(
        action_dims=cfg.action_dims, num_bins=cfg.num_bins, horizon=s.horizon,
        dim_weights=list(s.dim_weights) if s.dim_weights is not None else None,
        pairs=[(p.i, p.j, p.weight) for p in s.pairs], noise_std=s.noise_std, max_move=s.max_move,
        goal_reach=s.goal_reach, terminate_on_success=cfg.terminate_on_success, num_goals=s.num_goals,
        horizon_end=s.horizon_end,
    )


def _structured(cfg: EnvConfig, num_envs: int, seed: int, chunk_size: int, group_size: int) -> Any:
    env = StructuredTaskVectorEnv(structured_spec(cfg), num_envs, seed=seed,
                                  autoreset_mode=cfg.structured.autoreset_mode, spec_seed=cfg.structured.task_seed,
                                  observation=cfg.observation, image_size=cfg.image_size)
    return ChunkedVectorEnv(env, chunk_size) if chunk_size > 1 else env


def _metaworld(cfg: EnvConfig, num_envs: int, seed: int, chunk_size: int, group_size: int) -> Any:
    from .metaworld import make_metaworld_env

    return make_metaworld_env(cfg, num_envs, seed, chunk_size, group_size)


def _libero(cfg: EnvConfig, num_envs: int, seed: int, chunk_size: int, group_size: int) -> Any:
    from .libero import make_libero_env

    return make_libero_env(cfg, num_envs, seed, chunk_size, group_size)


def _maniskill(cfg: EnvConfig, num_envs: int, seed: int, chunk_size: int, group_size: int) -> Any:
    from .maniskill import make_maniskill_env

    return make_maniskill_env(cfg, num_envs, seed, chunk_size)


def _gym(cfg: EnvConfig, num_envs: int, seed: int, chunk_size: int, group_size: int) -> Any:
    from .gym_control import make_gym_env

    return make_gym_env(cfg, num_envs, seed, chunk_size)


def _metaworld_tasks(cfg: EnvConfig) -> list[str]:
    from .metaworld import resolve_tasks

    return resolve_tasks(cfg.task)


def _libero_tasks(cfg: EnvConfig) -> list[str]:
    from .libero import libero_suite_tasks

    return [name for name, _ in libero_suite_tasks(cfg.task)]


ENVS: dict[str, Callable[[EnvConfig, int, int, int, int], Any]] = {
    "structured": _structured, "metaworld": _metaworld, "libero": _libero, "maniskill": _maniskill, "gym": _gym,
}
# what env.task names: one task, or a benchmark of several (MT10, a LIBERO suite)
TASKS: dict[str, Callable[[EnvConfig], list[str]]] = {
    "structured": lambda cfg: ["structured"], "metaworld": _metaworld_tasks, "libero": _libero_tasks,
    "maniskill": lambda cfg: [cfg.task], "gym": lambda cfg: [cfg.task],
}
assert tuple(ENVS) == tuple(TASKS) == ENV_IDS  # config/choices.py lists the ids without importing this module


def make_env(cfg: EnvConfig, num_envs: int, seed: int, chunk_size: int = 1, group_size: int = 1) -> Any:
    """A vector env of ``num_envs`` copies of ``cfg.id`` following the env contract (envs/contract.py);
    ``chunk_size > 1``: each step executes a chunk of that many actions open loop (envs/chunking.py);
    ``group_size``: multi-task envs (MT10, a LIBERO suite) give every block of that many envs one task (GRPO)."""
    if cfg.id not in ENVS:
        raise ValueError(f"unknown env id {cfg.id!r}; valid: {list(ENVS)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return ENVS[cfg.id](cfg, num_envs, seed, chunk_size, group_size)


def tasks_of(cfg: EnvConfig) -> list[EnvConfig]:
    """One env config per task that ``cfg.task`` names (``MT10`` -> its 10 tasks; one task -> itself)."""
    return [dataclasses.replace(cfg, task=t) if cfg.id != "structured" else cfg for t in TASKS[cfg.id](cfg)]
