"""From a rollout to the update's batch: GAE, the structured head's scoring and fit, per-dim credit.

ALGORITHM.md §2 (GAE), §5 (credit) and §7 (the head's regression on the fresh batch). Everything the PPO
epochs read is one flat dict of ``[B, ...]`` tensors (``B = T x N`` local samples).
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator

from ..algo import chunk_return, compute_gae, credit_advantages, head_loss, normalize_advantages
from ..algo.grpo import group_advantages, group_keep_mask
from ..algo.heads import HeadOutput
from ..config import TrainConfig
from ..diagnostics import actor_variance_ratio
from ..policies.agent import Agent
from .accel import all_reduce_sum, any_rank
from .group_rollout import GroupOutcomes
from .rollout import Rollout

__all__ = ["batch_obs", "flatten_rollout", "gae_batch", "grpo_batch", "minibatches", "prepare_batch", "score_head",
           "select_rows"]


def flatten_rollout(rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, torch.Tensor]:
    """``[T, N, ...]`` rollout tensors -> ``[T*N, ...]`` (t-major, the order of the stored inputs). With action chunks,
    ``token_mask [B, D]`` marks the tokens of the chunk steps that were executed (an episode ending inside a chunk
    drops the rest: those tokens take no part in the update)."""

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, *x.shape[2:])

    batch = {
        "obs": rollout.obs, "actions": flat(rollout.actions), "logp": flat(rollout.logp),
        "bin_probs": flat(rollout.bin_probs), "features": flat(rollout.features), "values": flat(rollout.values),
        "advantages": flat(advantages), "returns": flat(returns), "valid": flat(rollout.valid),
    }
    if rollout.chunk_steps is not None:
        H = rollout.chunk_rewards.shape[-1]
        D = rollout.actions.shape[-1]
        executed = torch.arange(H, device=rollout.chunk_steps.device) < flat(rollout.chunk_steps)[:, None]  # [B, H]
        batch["token_mask"] = executed.repeat_interleave(D // H, dim=1)  # [B, D], step-major tokens
    return batch


def select_rows(batch: dict[str, Any], rows: torch.Tensor) -> dict[str, Any]:
    """The batch restricted to ``rows`` (GRPO keeps the decisions of kept groups' first episodes only). The
    observations are not copied (a VLA's pixel values are most of a rollout's memory, and the rollout still holds
    them): ``obs_rows`` maps the kept rows into ``obs``, and :func:`batch_obs` reads them through it."""
    out = {k: v[rows] for k, v in batch.items() if k != "obs"}
    out["obs"], out["obs_rows"] = batch["obs"], rows
    return out


def batch_obs(batch: dict[str, Any], idx: torch.Tensor) -> Any:
    """The policy inputs of the batch's samples ``idx`` (through ``obs_rows`` where :func:`select_rows` kept some)."""
    from ..policies.base import select_batch

    rows = batch.get("obs_rows")
    return select_batch(batch["obs"], idx if rows is None else rows[idx])


def minibatches(n: int, num_minibatches: int) -> list[torch.Tensor]:
    """A fresh shuffle of ``0..n-1`` in exactly ``num_minibatches`` parts, sizes differing by at most one (draws from
    the torch RNG). Exactly that many, some possibly empty, whatever ``n``: every process then takes as many
    optimizer steps (``chunk`` would return fewer parts, e.g. 3 for n=5 in 4, and GRPO batches differ in size)."""
    perm = torch.randperm(n)
    return list(torch.tensor_split(perm, num_minibatches))


def score_head(core: Agent, batch: dict[str, torch.Tensor]) -> HeadOutput:
    """The structured head's terms for the batch's actions, centred on the behaviour policy (no gradient)."""
    with torch.no_grad():
        return core.adv_head(batch["features"], batch["actions"], batch["bin_probs"])


def gae_batch(rollout: Rollout, cfg: TrainConfig) -> dict[str, Any]:
    """The flat batch with GAE advantages and returns (ALGORITHM.md §2; over decisions with action chunks)."""
    rewards = rollout.rewards
    if rollout.chunk_rewards is not None:  # a decision's reward: its chunk's steps, discounted within the chunk
        rewards = chunk_return(rollout.chunk_rewards, cfg.ppo.gamma)
    advantages, returns = compute_gae(
        rewards * cfg.ppo.reward_scale, rollout.values, rollout.next_value, rollout.terminated,
        rollout.truncated, gamma=cfg.ppo.gamma, gae_lambda=cfg.ppo.gae_lambda, final_values=rollout.final_values,
        valid=rollout.valid, steps=rollout.chunk_steps,
    )
    return flatten_rollout(rollout, advantages, returns)


def grpo_batch(rollout: Rollout, outcomes: GroupOutcomes, cfg: TrainConfig) -> tuple[dict[str, Any], dict[str, float]]:
    """The flat batch of the kept groups' episodes, every decision of an episode carrying its group-relative outcome
    advantage (algo/grpo.py); the outcome is the episode's return x ``ppo.reward_scale`` (SimpleVLA-RL: 5 x
    success). Rows of other episodes (after an env's episode ended) and of dropped groups are removed."""
    G = cfg.advantage.group_size
    device = rollout.rewards.device
    returns = torch.as_tensor(outcomes.returns, dtype=torch.float32, device=device) * cfg.ppo.reward_scale
    success = torch.as_tensor(outcomes.success, dtype=torch.float32, device=device)
    episode_adv = group_advantages(returns, G)  # [N]
    band = tuple(cfg.rollout.filter_groups) if cfg.rollout.filter_groups else None
    keep = group_keep_mask(success, G, band)  # [N]
    T = rollout.rewards.shape[0]
    advantages = episode_adv[None].expand(T, -1)
    batch = flatten_rollout(rollout, advantages, torch.zeros_like(advantages))
    rows = (batch["valid"] & keep[None].expand(T, -1).reshape(-1)).nonzero()[:, 0]
    groups = len(keep) // G
    metrics = {"rollout/groups_kept": float(keep.reshape(-1, G)[:, 0].sum()), "rollout/groups": float(groups),
               "rollout/group_success_rate": float(success.mean())}
    if len(rows) == 0:
        # nothing kept on this process: one row that weighs nothing (valid=False), so that the process still takes
        # part in every collective step of the update (DDP's forward and backward, the head's fit) with the others
        rows = torch.zeros(1, dtype=torch.long, device=device)
        batch["valid"] = torch.zeros_like(batch["valid"])
    return select_rows(batch, rows), metrics


def prepare_batch(core: Agent, optimizer, rollout: Rollout, cfg: TrainConfig, accelerator: Accelerator,
                  outcomes: GroupOutcomes | None = None
                  ) -> tuple[dict[str, torch.Tensor], HeadOutput | None, dict[str, float], bool]:
    """Advantages (GAE, or GRPO's group outcomes when ``outcomes`` are given) -> flat batch -> (the head scored
    before or after its fit, per ``head.credit_from``) -> per-dim credit ``batch["credit"] [B, D]``, normalised
    per ``ppo.norm_adv``. Returns ``(batch, head_out, metrics, nan_seen)``."""
    metrics: dict[str, float] = {}
    if outcomes is None:
        batch = gae_batch(rollout, cfg)
    else:
        batch, metrics = grpo_batch(rollout, outcomes, cfg)
    nan_seen = False
    head_out = None
    if core.adv_head is not None:
        # credit_from=previous: the credit comes from the head before it has seen this batch (out of sample)
        before = cfg.head.credit_from == "previous"
        if before:
            head_out = score_head(core, batch)
        fit_metrics, nan_seen = fit_head(core, optimizer, batch, cfg, accelerator)
        metrics.update(fit_metrics)
        if not before:
            head_out = score_head(core, batch)
    credit = credit_advantages(
        cfg.credit.mode, batch["advantages"], head_out, autoregressive=core.autoregressive,
        shared_source=cfg.credit.shared_source, surrogate=cfg.credit.surrogate,
        action_dims=core.policy.action_dims, scale=cfg.credit.baseline_scale, mask=batch["valid"],
    )  # [B, D]
    if head_out is not None:
        metrics["credit/actor_variance_ratio"] = actor_variance_ratio(credit, batch["advantages"], batch["valid"])
    if cfg.ppo.norm_adv:
        credit = normalize_advantages(credit, batch["advantages"], mask=batch["valid"],
                                      all_reduce_sum=all_reduce_sum(accelerator))
    batch["credit"] = credit
    return batch, head_out, metrics, nan_seen


def fit_head(core: Agent, optimizer, batch: dict[str, Any], cfg: TrainConfig, accelerator: Accelerator
             ) -> tuple[dict[str, float], bool]:
    """Head-only regression on the batch's stored features (ALGORITHM.md §7), gradients averaged by hand (it runs
    outside the DDP forward). Returns the mean fit metrics and whether a loss was non-finite."""
    head, p = core.adv_head, cfg.ppo
    params = [q for q in head.parameters() if q.requires_grad]
    inner = getattr(optimizer, "optimizer", optimizer)
    sums: dict[str, float] = {}
    steps, nan_seen = 0, False
    for _ in range(cfg.head.fit_epochs):
        for idx in minibatches(len(batch["actions"]), p.num_minibatches):
            out = head(batch["features"][idx], batch["actions"][idx], batch["bin_probs"][idx])
            loss, m = head_loss(out, batch["advantages"][idx], lambda_pair=p.lambda_pair, lambda_1=p.lambda_1,
                                lambda_2=p.lambda_2, mask=batch["valid"][idx])
            if any_rank(accelerator, not bool(torch.isfinite(loss))):
                nan_seen = True
                break
            inner.zero_grad(set_to_none=True)
            loss.backward()
            if accelerator.num_processes > 1:
                for q in params:  # every process reduces every parameter (one whose part was empty: zeros)
                    grad = q.grad if q.grad is not None else torch.zeros_like(q)
                    q.grad = accelerator.reduce(grad, reduction="mean")
            torch.nn.utils.clip_grad_norm_(params, p.max_grad_norm)
            inner.step()
            steps += 1
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        if nan_seen:
            break
    inner.zero_grad(set_to_none=True)
    return {f"losses/head_fit_{k}": v / max(steps, 1) for k, v in sums.items()}, nan_seen
