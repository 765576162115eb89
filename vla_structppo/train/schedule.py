"""The optimizer's parameter groups and their learning rates over a PPO run (``ppo.lr_schedule``)."""

from __future__ import annotations

import math
from typing import Any

from ..config import TrainConfig
from ..policies.agent import Agent

__all__ = ["ADAPTIVE_FACTOR", "ADAPTIVE_SCALE_BOUNDS", "adapt_lr_scale", "param_groups", "set_learning_rates"]

# lr_schedule: adaptive -- the factor applied per update and the bounds of the policy's learning-rate scale
ADAPTIVE_FACTOR, ADAPTIVE_SCALE_BOUNDS = 1.5, (0.01, 10.0)


def param_groups(agent: Agent, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Policy (first: ``adaptive`` steers that one), value head (GRPO has none), structured head: each with its own
    rate."""
    value_lr = cfg.ppo.value_learning_rate if cfg.ppo.value_learning_rate is not None else cfg.ppo.learning_rate
    groups = [{"params": agent.trainable_parameters(), "lr": cfg.ppo.learning_rate, "base_lr": cfg.ppo.learning_rate}]
    if agent.value_head is not None:
        groups.append({"params": list(agent.value_head.parameters()), "lr": value_lr, "base_lr": value_lr})
    if agent.adv_head is not None:
        groups.append({"params": list(agent.adv_head.parameters()), "lr": cfg.ppo.head_learning_rate,
                       "base_lr": cfg.ppo.head_learning_rate})
    return groups


def set_learning_rates(optimizer, cfg: TrainConfig, update: int, adaptive_scale: float) -> None:
    """Every group's rate for ``update``: ``base_lr`` x the schedule's factor. The time schedules (constant, linear,
    cosine) scale every group alike; ``adaptive`` scales the policy's group (the first) by ``adaptive_scale`` (the
    trainer's ``counters["lr_scale"]``, steered by :func:`adapt_lr_scale`) and leaves the value and head rates."""
    progress = (update - 1) / cfg.num_updates
    schedule = cfg.ppo.lr_schedule
    factor = {"linear": 1.0 - progress, "cosine": 0.5 * (1.0 + math.cos(math.pi * progress))}.get(schedule, 1.0)
    for k, group in enumerate(optimizer.param_groups):
        group["lr"] = group["base_lr"] * (adaptive_scale if schedule == "adaptive" and k == 0 else factor)


def adapt_lr_scale(scale: float, kl: float, desired_kl: float) -> float:
    """The policy learning rate's next scale under ``lr_schedule: adaptive`` from the update's measured KL."""
    if not math.isfinite(kl):
        return scale
    if kl > 2.0 * desired_kl:
        scale /= ADAPTIVE_FACTOR
    elif kl < 0.5 * desired_kl:
        scale *= ADAPTIVE_FACTOR
    return min(max(scale, ADAPTIVE_SCALE_BOUNDS[0]), ADAPTIVE_SCALE_BOUNDS[1])
