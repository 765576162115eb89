"""GRPO's rollout: one whole episode per env, the ``G`` envs of a group started from the same initial state.

``advantage.estimator: grpo`` (algo/grpo.py) scores each episode by its outcome and compares it with the other
episodes of its group, so the envs of a group must start alike: :func:`group_seeds` gives every env of a group
the same reset seed (fresh for every group and update), and the env contract's ``reset(seed=[...])`` with
``options={"repeat": True}`` turns equal seeds into equal initial states (a MetaWorld goal / object position, a
LIBERO fixed init state, a MuJoCo start state, a structured-task goal). Envs step until every episode of the
batch has ended; the decisions after an env's episode ended (its autoreset's next episode) are masked out.
"""

from __future__ import annotations

import numpy as np
import torch

from ..policies.agent import Agent
from .rollout import EpisodeStats, Rollout, RolloutState, record_episodes, rollout_info, stack_rollout

__all__ = ["GroupOutcomes", "check_repeatable", "collect_group_episodes", "group_seeds"]


class GroupOutcomes:
    """Per env: its episode's return (the outcome) and whether it succeeded, in group order."""

    def __init__(self, returns: np.ndarray, success: np.ndarray) -> None:
        self.returns, self.success = returns, success


def group_seeds(seed: int, rank: int, update: int, num_envs: int, group_size: int) -> np.ndarray:
    """``int [num_envs]``: env ``j``'s reset seed, equal within each group of ``group_size`` consecutive envs and
    independent across groups, processes and updates (a SeedSequence of ``(seed, rank, update, group)``)."""
    groups = num_envs // group_size
    per_group = [int(np.random.SeedSequence([seed, rank, update, g]).generate_state(1)[0]) for g in range(groups)]
    return np.repeat(np.asarray(per_group, np.int64), group_size)


def check_repeatable(envs, env_id: str) -> None:
    """Fail clearly when ``envs`` cannot start several envs from one initial state."""
    if not getattr(envs, "repeatable_resets", False):
        from ..config import ConfigError

        raise ConfigError(f"advantage.estimator=grpo compares episodes that start from the same initial state, but "
                          f"env.id={env_id!r} cannot restart two envs alike (its envs do not implement "
                          "reset(seed=[...]) with repeatable initial states); use advantage.estimator=gae")


@torch.no_grad()
def collect_group_episodes(agent: Agent, envs, state: RolloutState, seeds: np.ndarray, max_decisions: int,
                           device: torch.device) -> tuple[Rollout, GroupOutcomes]:
    """Reset every env with its group's seed and run until every episode has ended (at most ``max_decisions``);
    returns the rollout (``valid`` marks each env's decisions of its first episode) and the episodes' outcomes."""
    N = envs.num_envs
    obs, _ = envs.reset(seed=[int(s) for s in seeds], options={"repeat": True})
    policy = agent.policy
    steps: list[dict] = []
    finished = np.zeros(N, bool)
    outcome, success = np.zeros(N), np.zeros(N, bool)
    episodes = EpisodeStats()
    for _ in range(max_decisions):
        obs_t = policy.prepare(obs)
        out = policy.act(obs_t)
        value = agent.value(obs_t, out.features).float()
        obs, reward, terminated, truncated, info = envs.step(out.actions.cpu().numpy())
        terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
        valid = ~finished
        success |= valid & np.asarray(info.get("success", np.zeros(N, bool)), bool)
        ended = valid & (terminated | truncated)
        if ended.any():
            outcome[ended] = np.asarray(info["episode_return"])[ended]
            # success anywhere in the episode: the outcome GRPO scores
            record_episodes(info, episodes, ended=ended, success=success)
        steps.append(dict(obs=obs_t, out=out, value=value, reward=reward, terminated=terminated,
                          truncated=truncated, valid=valid, info=rollout_info(info)))
        finished |= terminated | truncated
        if finished.all():
            break
    if not finished.all():
        raise RuntimeError(f"{int((~finished).sum())} of {N} episodes did not end within {max_decisions} decisions: "
                           "GRPO scores whole episodes (does the env have a time limit?)")
    state.obs = obs
    state.resetting = np.zeros(N, bool)
    rollout = stack_rollout(policy, steps, episodes, next_value=torch.zeros(N, device=device), device=device)
    return rollout, GroupOutcomes(outcome, success)
