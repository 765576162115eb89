"""Generalised advantage estimation that keeps termination, truncation and autoreset apart.

ALGORITHM.md §2. Three different things end a transition chain and each is treated on its own:

* ``terminated[t]``: the MDP ended at ``s_{t+1}``; its value is 0, so no bootstrap.
* ``truncated[t]``: a time limit cut the episode; the state after it still had value, so we
  bootstrap with ``V(final observation)`` (SB3 issue #633; CleanRL #198 / #457 show what merging costs).
* ``valid[t] == False``: gymnasium >= 1.0 vector envs reset on the NEXT ``step()`` call; that call is
  not a transition (its action is ignored, its reward is 0), so it gets no advantage and no loss.

With action chunks (``action.chunk_size: H``) a transition is one *decision*: the chunk executed open loop for
``steps[t]`` env steps (H, or fewer when the episode ended inside the chunk). Its reward is the discounted sum
of the steps' rewards (:func:`chunk_return`) and the value after it is discounted by ``gamma ** steps[t]``: GAE
over decisions of a semi-Markov process, which equals per-step GAE with lambda = 1 inside every chunk.
"""

from __future__ import annotations

import torch

__all__ = ["chunk_return", "compute_gae"]


@torch.no_grad()
def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_value: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    *,
    gamma: float,
    gae_lambda: float,
    final_values: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    steps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(gamma, lambda) over a rollout of ``T`` steps from ``N`` envs.

    Args:
        rewards: ``[T, N]`` reward of transition ``t``.
        values: ``[T, N]`` ``V(s_t)``.
        next_value: ``[N]`` ``V(s_T)``, the observation after the last step of the rollout.
        terminated: ``[T, N]`` bool, episode ended by the MDP at transition ``t``.
        truncated: ``[T, N]`` bool, episode cut by a time limit at transition ``t``.
        gamma, gae_lambda: discount and GAE lambda.
        final_values: ``[T, N]`` ``V(final observation)`` where ``truncated``; read only there.
            Required when any step is truncated and not terminated.
        valid: ``[T, N]`` bool, ``False`` for the autoreset steps of next-step autoreset envs.
        steps: ``[T, N]`` env steps each transition spanned (action chunks); None = 1 each.

    Returns:
        ``(advantages, returns)``, both ``[T, N]``; both are 0 on invalid steps.

    The recursion, for a valid step::

        next_v = 0                    if terminated[t]
               = final_values[t]      elif truncated[t]
               = values[t+1]          otherwise (next_value at t = T-1)
        g_t    = gamma ** steps[t]         (gamma without chunks)
        delta  = r_t + g_t * next_v - V(s_t)
        A_t    = delta + g_t * lambda * (1 - done_t) * A_{t+1}
    """
    T, N = rewards.shape
    terminated = terminated.bool()
    truncated = truncated.bool() & ~terminated  # a step that is both is a termination
    if valid is None:
        valid = torch.ones_like(terminated)
    valid = valid.bool()
    if final_values is None:
        if bool((truncated & valid).any()):
            raise ValueError(
                "compute_gae: some steps are truncated but no final_values were given; pass V(final obs) "
                "so time-limit truncation can bootstrap (ALGORITHM.md §2)."
            )
        final_values = torch.zeros_like(values)

    # gamma ** steps per transition; plain gamma (a Python float, as always) without chunks
    discount = None if steps is None else torch.pow(torch.full_like(rewards, gamma), steps.to(rewards.dtype))
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros(N, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        following = next_value if t == T - 1 else values[t + 1]  # [N]
        next_v = torch.where(terminated[t], torch.zeros_like(following), following)
        next_v = torch.where(truncated[t], final_values[t], next_v)
        done = terminated[t] | truncated[t]
        g = gamma if discount is None else discount[t]
        delta = rewards[t] + g * next_v - values[t]
        gae = delta + g * gae_lambda * (~done).to(rewards.dtype) * last_gae
        gae = torch.where(valid[t], gae, torch.zeros_like(gae))
        advantages[t] = gae
        last_gae = gae
    returns = torch.where(valid, advantages + values, torch.zeros_like(values))
    return advantages, returns


def chunk_return(step_rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """``sum_j gamma**j r_j`` over the last dim: the reward of a decision whose chunk earned ``step_rewards
    [..., H]`` (zeros after the steps it did not execute)."""
    H = step_rewards.shape[-1]
    powers = torch.pow(torch.full((H,), gamma, dtype=step_rewards.dtype, device=step_rewards.device),
                       torch.arange(H, dtype=step_rewards.dtype, device=step_rewards.device))
    return (step_rewards * powers).sum(-1)
