"""Group-relative outcome advantages (GRPO; Shao et al. 2024), as the VLA-RL systems use them.

SimpleVLA-RL and RLinf (../shared/notes/openvla-oft.md §2-3) roll out ``G`` episodes from the same initial state
(a *group*), score each episode by its outcome (5 x success), and give every token of an episode the same
advantage ``(R - mean_group) / (std_group + eps)``; no critic. Groups whose success rate lies outside a band
(e.g. 10-90%: all-fail or all-succeed groups carry no signal) are dropped from the update (*dynamic
sampling*). verl's ``compute_grpo_outcome_advantage``: the group std is the unbiased one (Bessel), a group of
one has mean 0 and std 1, ``eps = 1e-6``.
"""

from __future__ import annotations

import torch

__all__ = ["group_advantages", "group_keep_mask"]


def group_advantages(returns: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """``(R - mean_g) / (std_g + eps)`` for episode outcomes ``returns [M]`` ordered in groups of ``group_size``
    consecutive episodes (episode ``m`` is in group ``m // group_size``); ``[M]``. A group whose outcomes are all
    equal (std 0) gets advantage 0 everywhere."""
    if returns.ndim != 1 or returns.shape[0] % group_size:
        raise ValueError(f"returns must be [M] with M a multiple of group_size={group_size}, got {tuple(returns.shape)}")
    r = returns.double().reshape(-1, group_size)  # [groups, G]
    if group_size == 1:
        mean, std = torch.zeros_like(r), torch.ones_like(r)
    else:
        mean = r.mean(dim=1, keepdim=True)
        std = r.std(dim=1, keepdim=True)  # unbiased, as verl
    return ((r - mean) / (std + eps)).reshape(-1).to(returns.dtype)


def group_keep_mask(success: torch.Tensor, group_size: int, band: tuple[float, float] | None) -> torch.Tensor:
    """``[M]`` bool: the episodes of groups whose success rate lies in ``band = (low, high)`` (inclusive; None keeps
    every group). ``success [M]`` (0/1) is ordered in groups as for :func:`group_advantages`."""
    if band is None:
        return torch.ones_like(success, dtype=torch.bool)
    rate = success.double().reshape(-1, group_size).mean(dim=1)  # [groups]
    keep = (rate >= band[0] - 1e-12) & (rate <= band[1] + 1e-12)
    return keep.repeat_interleave(group_size)
