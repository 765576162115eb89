"""Everything a PPO run sets up before its first update, and its checkpoints (save and resume).

:func:`start_run` makes the envs and the agent, claims the run dir only once both exist, builds the
optimizer, prepares them with Accelerate and, on ``resume=``, restores the optimizer, counters, RNG streams,
env and rollout state from the checkpoint (whose format :mod:`vla_structppo.checkpoints.trainer_state` owns).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..checkpoints import build_agent, layout, save_agent, write_atomic_dir
from ..checkpoints.rundir import RunLock, run_in_dir
from ..checkpoints.store import prune, staging_dirs, start_dir
from ..checkpoints.trainer_state import (
    RankState,
    TrainerState,
    read_rank_state,
    read_trainer_state,
    require_resume_files,
    write_rank_state,
    write_trainer_state,
)
from ..config import ConfigError, TrainConfig, to_yaml
from ..envs import make_env
from ..policies.agent import Agent
from .group_rollout import check_repeatable
from .metrics_log import MetricsLog
from .ppo_log import progress_bar
from .rollout import RolloutState
from .schedule import param_groups
from .trackers import start_trackers

__all__ = ["PPORun", "save_checkpoint", "start_run"]


@dataclass
class PPORun:
    """The live objects of a run: ``agent`` is what Accelerate prepared (DDP-wrapped on several processes),
    ``core`` the plain :class:`Agent` inside; ``counters`` = ``update``, ``global_step``, ``nan_streak`` (and
    ``lr_scale`` under ``lr_schedule: adaptive``), all saved in checkpoints."""

    accelerator: Accelerator
    envs: Any
    agent: Any
    core: Agent
    optimizer: Any
    state: RolloutState
    counters: dict[str, Any]
    history: MetricsLog
    pbar: Any


def start_run(cfg: TrainConfig, command: str | None, start: Path | None, accelerator: Accelerator,
              lock: RunLock | None) -> PPORun:
    """Envs, agent (from ``start`` when given), run dir, optimizer, trackers; resumed state on ``resume=``."""
    rank, world = accelerator.process_index, accelerator.num_processes
    _check_trainable(cfg, world)
    set_seed(cfg.seed)  # identical initial weights on every process
    env_seed = cfg.seed * 1_000_003 + rank
    grpo = cfg.advantage.estimator == "grpo"
    envs = make_env(cfg.env, cfg.env.num_envs // world, seed=env_seed, chunk_size=cfg.action.chunk_size,
                    group_size=cfg.advantage.group_size if grpo else 1)
    if grpo:
        check_repeatable(envs, cfg.env.id)
    obs_space = envs.single_observation_space
    agent = build_agent(cfg, obs_dim=None if cfg.policy.type == "vla" else obs_space.shape[0], start_from=start)
    # the env executes what the policy's tokens mean; from a checkpoint, observation statistics continue
    agent.configure_env(envs, evaluation=False)
    if lock is not None:  # the run is known to start (envs made, model loaded): only now is its dir written
        run_in_dir(cfg, lock)
        (cfg.run_dir / layout.CONFIG).write_text(to_yaml(cfg))
        if command and not cfg.resume:  # how the run was started, for the model card's "reproduce" line
            (cfg.run_dir / layout.COMMAND).write_text(command + "\n")
    accelerator.wait_for_everyone()
    optimizer = torch.optim.Adam(param_groups(agent, cfg), eps=1e-5)
    agent, optimizer = accelerator.prepare(agent, optimizer)
    core: Agent = accelerator.unwrap_model(agent)
    set_seed(cfg.seed + rank)  # each process samples its own actions and minibatches
    obs, _ = envs.reset(seed=env_seed)
    state = RolloutState(obs if isinstance(obs, dict) else np.asarray(obs), np.zeros(envs.num_envs, bool))
    if cfg.policy.type == "vla":
        core.policy.temperature = cfg.model.rollout_temperature
    counters: dict[str, Any] = {"update": 0, "global_step": 0, "nan_streak": 0}
    if cfg.resume:
        counters = _resume(start, accelerator, core, optimizer, envs, state)
    history = MetricsLog(cfg.run_dir / layout.METRICS, accelerator.is_main_process, keep_until=counters["update"])
    start_trackers(accelerator, cfg, "ppo")
    return PPORun(accelerator, envs, agent, core, optimizer, state, counters, history,
                  progress_bar(cfg, accelerator, counters["update"]))


def _check_trainable(cfg: TrainConfig, world: int) -> None:
    """What only a training run (not an evaluation of the same config) cannot do."""
    if cfg.env.num_envs % world:
        raise ConfigError(f"env.num_envs={cfg.env.num_envs} must be divisible by the {world} processes")
    per_process = cfg.env.num_envs // world
    if cfg.advantage.estimator == "grpo" and per_process % cfg.advantage.group_size:
        raise ConfigError(f"advantage.group_size={cfg.advantage.group_size} must divide the {per_process} envs of each "
                          f"of the {world} processes (a group never spans processes)")
    if cfg.model.action_head != "tokens" and cfg.policy.type == "vla":
        raise ConfigError(f"model.action_head={cfg.model.action_head} gives continuous actions without log-probs: PPO "
                          "trains the action tokens (model.action_head=tokens); l1 is for eval and predict")


def save_checkpoint(run: PPORun, cfg: TrainConfig) -> None:
    """Checkpoint ``run`` as of ``counters["update"]``: every process writes its rank state, the main one the agent
    and the trainer state, into a temporary dir renamed into place once complete (atomic)."""
    accelerator, core = run.accelerator, run.core
    tmp, final = staging_dirs(cfg.run_dir, run.counters["update"])
    if accelerator.is_main_process:
        start_dir(tmp)
    accelerator.wait_for_everyone()
    env_state = run.envs.get_state()
    if hasattr(run.envs, "normalization_state"):  # saved beside the weights: eval and init_from need it
        core.env_normalization = run.envs.normalization_state()
    write_rank_state(tmp, accelerator.process_index, RankState.capture(env_state, run.state.state_dict()))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_agent(core, tmp, cfg)
        write_trainer_state(tmp, TrainerState(run.optimizer.state_dict(), run.counters, accelerator.num_processes))
        write_atomic_dir(tmp, final)
        prune(cfg.run_dir, cfg.logging.keep_checkpoints)
    accelerator.wait_for_everyone()


def _resume(where: Path, accelerator: Accelerator, core: Agent, optimizer, envs, state: RolloutState) -> dict:
    """The optimizer, counters, RNG streams, env and rollout state of checkpoint ``where`` (its policy and heads
    were loaded when the agent was built from it)."""
    rank = accelerator.process_index
    require_resume_files(where, rank, list(core.heads()))
    trainer = read_trainer_state(where)
    optimizer.load_state_dict(trainer.optimizer)
    saved = read_rank_state(where, rank)
    saved.restore_rng()
    if saved.env is not None:
        envs.set_state(saved.env)
    else:
        warnings.warn("this env cannot save its state: resumed envs start fresh episodes", stacklevel=1)
    restored = RolloutState.from_state_dict(saved.rollout)
    state.obs, state.resetting = restored.obs, np.asarray(restored.resetting).astype(bool)
    return trainer.counters
