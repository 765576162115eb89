"""Collect a rollout from a gymnasium vector env into a flat buffer.

Termination, truncation and next-step autoreset are recorded apart (ALGORITHM.md §2) and meet only
in :func:`vla_structppo.algo.compute_gae`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from ..envs.contract import map_obs, take_obs
from ..policies.agent import Agent

__all__ = ["EpisodeStats", "Rollout", "RolloutState", "collect_rollout", "executed_env_steps", "record_episodes",
           "rollout_info", "stack_rollout"]


@dataclass
class RolloutState:
    """What carries over between rollouts (and into checkpoints): the current observation and, for
    next-step autoreset envs, which envs' next ``step()`` is only a reset."""

    obs: Any  # an array, or a dict of arrays (image observations: image + instruction strings)
    resetting: np.ndarray

    def state_dict(self) -> dict[str, Any]:
        # strings travel as lists: checkpoints are read back with torch.load(weights_only=True)
        return {"obs": map_obs(self.obs, lambda v: v.tolist() if v.dtype.kind in "USO" else v.copy()),
                "resetting": self.resetting.copy()}

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> RolloutState:
        obs = map_obs(d["obs"], lambda v: v.copy())
        return cls(obs, np.asarray(d["resetting"]).copy())


@dataclass
class EpisodeStats:
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    optimal: list[float] = field(default_factory=list)
    success: list[float] = field(default_factory=list)


@dataclass
class Rollout:
    """``[T, N, ...]`` tensors of one rollout (T steps of N local envs)."""

    obs: Any  # prepared policy inputs of all T*N samples, flat (t-major), see Policy.prepare / collate
    actions: torch.Tensor  # [T, N, D]
    logp: torch.Tensor  # [T, N, D]
    bin_probs: torch.Tensor  # [T, N, D, K]
    features: torch.Tensor  # [T, N, H]
    values: torch.Tensor  # [T, N]
    rewards: torch.Tensor  # [T, N]
    terminated: torch.Tensor  # [T, N] bool
    truncated: torch.Tensor  # [T, N] bool
    valid: torch.Tensor  # [T, N] bool, False on next-step autoreset steps
    final_values: torch.Tensor  # [T, N] V(final obs) where truncated
    next_value: torch.Tensor  # [N]
    reward_per_dim: torch.Tensor | None  # [T, N, D] ground truth, when the env exposes it
    episodes: EpisodeStats
    # action chunks (envs/chunking.py): each executed step's reward [T, N, H] and the steps executed [T, N]
    chunk_rewards: torch.Tensor | None = None
    chunk_steps: torch.Tensor | None = None


def _final_obs_values(agent: Agent, info: dict, truncated: np.ndarray, device) -> torch.Tensor:
    """``V(final obs)`` for same-step autoreset envs (the final obs is only in ``info``)."""
    out = torch.zeros(len(truncated), device=device)
    if truncated.any() and "final_obs" in info:
        idx = np.nonzero(truncated)[0]
        inputs = agent.policy.prepare(take_obs(info["final_obs"], idx))
        out[torch.as_tensor(idx, device=device)] = agent.value(inputs, agent.policy.encode(inputs)).float()
    return out


@torch.no_grad()
def collect_rollout(agent: Agent, envs, state: RolloutState, num_steps: int, device: torch.device) -> Rollout:
    """Step ``envs`` for ``num_steps`` with ``agent.policy.act``; updates ``state`` in place."""
    next_step = envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP) == AutoresetMode.NEXT_STEP
    N = envs.num_envs
    steps: list[dict[str, Any]] = []
    episodes = EpisodeStats()
    policy = agent.policy
    for _ in range(num_steps):
        obs_t = policy.prepare(state.obs)
        out = policy.act(obs_t)
        value = agent.value(obs_t, out.features).float()
        next_obs, reward, terminated, truncated, info = envs.step(out.actions.cpu().numpy())
        terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
        valid = ~state.resetting if next_step else np.ones(N, bool)
        step = dict(obs=obs_t, out=out, value=value, reward=reward, terminated=terminated, truncated=truncated,
                    valid=valid, info=rollout_info(info))
        if not next_step:  # next-step autoreset: the final obs IS the next obs, its value is filled in below
            step["final_value"] = _final_obs_values(agent, info, truncated & ~terminated, device)
        steps.append(step)
        record_episodes(info, episodes)
        state.obs = next_obs if isinstance(next_obs, dict) else np.asarray(next_obs)
        state.resetting = terminated | truncated if next_step else np.zeros(N, bool)

    next_inputs = policy.prepare(state.obs)
    next_value = agent.value(next_inputs, policy.encode(next_inputs)).float()
    rollout = stack_rollout(policy, steps, episodes, next_value, device)
    if next_step:  # V(obs_{t+1}) = V(final obs)
        rollout.final_values = torch.cat([rollout.values[1:], next_value[None]], dim=0)
    return rollout


def executed_env_steps(rollout: Rollout) -> int:
    """Env steps the rollout took (every env's, valid or not): its decisions x the steps each chunk executed."""
    if rollout.chunk_steps is not None:
        return int(rollout.chunk_steps.sum())
    return int(rollout.rewards.numel())


def stack_rollout(policy: Any, steps: list[dict[str, Any]], episodes: EpisodeStats, next_value: torch.Tensor,
                  device: torch.device) -> Rollout:
    """The ``[T, N, ...]`` rollout of per-step records ``{obs, out (ActOutput), value, reward, terminated, truncated,
    valid, info[, final_value]}``; a step without ``final_value`` bootstraps nothing (zeros)."""
    N = len(steps[0]["valid"])

    def stack(key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.stack([torch.as_tensor(s[key], dtype=dtype, device=device) for s in steps])

    def from_info(key: str, dtype: torch.dtype) -> torch.Tensor | None:
        if not all(key in s["info"] for s in steps):
            return None
        return torch.stack([torch.as_tensor(s["info"][key], dtype=dtype, device=device) for s in steps])

    return Rollout(
        obs=policy.collate([s["obs"] for s in steps]),
        actions=torch.stack([s["out"].actions for s in steps]),
        logp=torch.stack([s["out"].logp.float() for s in steps]),
        bin_probs=torch.stack([s["out"].bin_probs.float() for s in steps]),
        features=torch.stack([s["out"].features.float() for s in steps]),
        values=torch.stack([s["value"] for s in steps]),
        rewards=stack("reward", torch.float32),
        terminated=stack("terminated"),
        truncated=stack("truncated"),
        valid=stack("valid"),
        final_values=torch.stack([s["final_value"] if "final_value" in s else torch.zeros(N, device=device)
                                  for s in steps]),
        next_value=next_value,
        reward_per_dim=from_info("reward_per_dim", torch.float32),
        episodes=episodes,
        chunk_rewards=from_info("chunk_rewards", torch.float32),
        chunk_steps=from_info("chunk_steps", torch.long),
    )


# what a rollout keeps of a step's info (not the rest: e.g. ``final_obs`` holds pictures)
_ROLLOUT_INFO = ("reward_per_dim", "chunk_rewards", "chunk_steps")


def rollout_info(info: dict) -> dict:
    """The fields of a step's ``info`` that :func:`stack_rollout` reads."""
    return {k: info[k] for k in _ROLLOUT_INFO if k in info}


def record_episodes(info: dict, episodes: EpisodeStats, ended: np.ndarray | None = None,
                    success: np.ndarray | None = None) -> None:
    """Append the episodes that ended at this step: the envs ``ended`` (default: ``info["_episode"]``), their
    success from ``success`` (default: ``info["success"]`` at this step)."""
    done = info.get("_episode") if ended is None else ended
    if done is None:
        return
    if success is None and "success" in info:
        success = info["success"]
    for i in np.nonzero(done)[0]:
        episodes.returns.append(float(info["episode_return"][i]))
        episodes.lengths.append(int(info["episode_length"][i]))
        if "episode_optimal" in info:
            episodes.optimal.append(float(info["episode_optimal"][i]))
        if success is not None:
            episodes.success.append(float(success[i]))
