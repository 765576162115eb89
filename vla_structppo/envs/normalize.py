"""Observation and reward normalisation for continuous-control tasks, with state that checkpoints keep.

The formulas are gymnasium's ``NormalizeObservation`` / ``NormalizeReward`` as CleanRL's continuous
PPO stacks them: observations ``clip((x - mean) / sqrt(var + 1e-8), ±clip)`` with running statistics
updated on every step's batch; rewards divided by the running std of a per-env discounted return
``R ← γ R (1 − terminated) + r`` (truncation does not reset it, as in gymnasium), then clipped.
One set of statistics covers the whole env vector (OpenAI baselines' ``VecNormalize``, which Tang &
Agrawal used; CleanRL's per-env wrappers keep one set per env).

The state — statistics, per-env returns, whether it still updates — round-trips exactly through
:meth:`EnvNormalizer.state_dict` (plain floats: float64 survives JSON's repr) so a resumed run
continues with the same numbers and an evaluation sees observations as the policy saw them in
training (with ``frozen`` statistics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["EnvNormalizer", "NormalizationConfig", "RunningMeanStd"]

_EPS = 1e-8


class RunningMeanStd:
    """Mean and variance of a stream of batches (Chan et al.'s parallel update, as gymnasium's)."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4) -> None:
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = float(epsilon)

    def update(self, batch: np.ndarray) -> None:
        batch = np.asarray(batch, np.float64)
        batch_mean, batch_var, batch_count = batch.mean(axis=0), batch.var(axis=0), batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + np.square(delta) * self.count * batch_count / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "var": self.var.tolist(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mean, var = np.asarray(state["mean"], np.float64), np.asarray(state["var"], np.float64)
        if mean.shape != self.mean.shape or var.shape != self.var.shape:
            raise ValueError(f"normalisation statistics of shape {mean.shape} do not fit observations of shape "
                             f"{self.mean.shape}: they were saved for another env")
        self.mean, self.var, self.count = mean, var, float(state["count"])


@dataclass(frozen=True)
class NormalizationConfig:
    observations: bool = True
    rewards: bool = True
    clip_obs: float = 10.0
    clip_reward: float = 10.0
    gamma: float = 0.99


class EnvNormalizer:
    """Normalises a vector env's observations ``[N, obs_dim]`` and rewards ``[N]`` (module doc).

    ``frozen``: the statistics no longer update (evaluation).
    """

    def __init__(self, obs_dim: int, num_envs: int, config: NormalizationConfig) -> None:
        self.config = config
        self.obs_rms = RunningMeanStd((obs_dim,))
        self.return_rms = RunningMeanStd(())
        self.returns = np.zeros(num_envs, np.float64)
        self.frozen = False

    def observations(self, obs: np.ndarray, *, update: bool = True) -> np.ndarray:
        """``obs [N, obs_dim]`` normalised; the statistics first take in this batch (unless frozen)."""
        if not self.config.observations:
            return np.asarray(obs, np.float32)
        if update and not self.frozen:
            self.obs_rms.update(obs)
        return self.transform(obs)

    def transform(self, obs: np.ndarray) -> np.ndarray:
        """Normalise with the current statistics, updating nothing (final observations, evaluation)."""
        if not self.config.observations:
            return np.asarray(obs, np.float32)
        scaled = (np.asarray(obs, np.float64) - self.obs_rms.mean) / np.sqrt(self.obs_rms.var + _EPS)
        return np.clip(scaled, -self.config.clip_obs, self.config.clip_obs).astype(np.float32)

    def rewards(self, reward: np.ndarray, terminated: np.ndarray) -> np.ndarray:
        """``reward [N]`` scaled by the running std of the discounted return (and clipped)."""
        reward = np.asarray(reward, np.float64)
        if not self.config.rewards:
            return reward
        if not self.frozen:
            self.returns = self.returns * self.config.gamma * (1.0 - np.asarray(terminated, np.float64)) + reward
            self.return_rms.update(self.returns)
        scaled = reward / np.sqrt(self.return_rms.var + _EPS)
        return np.clip(scaled, -self.config.clip_reward, self.config.clip_reward)

    def state_dict(self) -> dict[str, Any]:
        return {"obs": self.obs_rms.state_dict(), "return": self.return_rms.state_dict(),
                "returns": self.returns.tolist(), "config": vars(self.config).copy()}

    def load_state_dict(self, state: dict[str, Any], *, with_returns: bool = True) -> None:
        """Restore statistics (and, ``with_returns``, the per-env discounted returns of a resumed run)."""
        self.obs_rms.load_state_dict(state["obs"])
        self.return_rms.load_state_dict(state["return"])
        if with_returns:
            returns = np.asarray(state["returns"], np.float64)
            if returns.shape != self.returns.shape:
                raise ValueError(f"saved returns are for {returns.shape[0]} envs, this vector has "
                                 f"{self.returns.shape[0]}")
            self.returns = returns
