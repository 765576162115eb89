"""Per-dimension advantages for the actor (ALGORITHM.md §5).

One pure function maps the GAE advantage ``A_hat [B]`` and the head's view of the taken actions to the
advantage every action dim's log-prob is weighted with, ``A [B, D]``.
"""

from __future__ import annotations

import torch

from .heads import HeadOutput

__all__ = ["BASELINE_SCALES", "CREDIT_MODES", "HEAD_MODES", "baseline_scale", "credit_advantages",
           "counterfactual_baseline"]

CREDIT_MODES = ("joint", "shared_local", "structured", "counterfactual")
#: modes that read the structured head (they need ``head.enabled``)
HEAD_MODES = ("shared_local", "structured", "counterfactual")
SHARED_SOURCES = ("gae", "head")
SURROGATES = ("per_dim", "mean")
#: counterfactual: subtract the head's baseline as it is (``one``) or scaled per dim by its fitted coefficient
BASELINE_SCALES = ("one", "fitted")


def baseline_scale(advantages: torch.Tensor, baseline: torch.Tensor, mask: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """``beta [D]``: per dim, the control-variate coefficient ``Cov(A_hat, c_i) / Var(c_i)`` over the batch,
    clipped to [0, 1], so that ``Var(A_hat - beta_i c_i) <= Var(A_hat)`` on the batch whatever the head says.

    A head that explains little (late in training, when the policy has sharpened) gets a small ``beta``
    and its fitting error stops adding variance; an accurate one keeps ``beta ~ 1``. A constant times a
    baseline that does not involve ``a^i`` is still such a baseline: the gradient stays unbiased
    (``beta`` is a batch statistic; its dependence on any one sample is O(1/B)).
    """
    adv = advantages.detach().double()
    c = baseline.detach().double()
    m = torch.ones_like(adv) if mask is None else mask.to(adv.dtype)
    n = m.sum().clamp_min(1.0)
    adv_c = adv - (adv * m).sum() / n
    c_c = c - (c * m[:, None]).sum(0) / n
    cov = (adv_c[:, None] * c_c * m[:, None]).sum(0)
    var = (c_c * c_c * m[:, None]).sum(0)
    beta = torch.where(var > 0, cov / var.clamp_min(1e-300), torch.zeros_like(var))
    return beta.clamp(0.0, 1.0).to(baseline.dtype)


def counterfactual_baseline(head: HeadOutput, *, autoregressive: bool) -> torch.Tensor:
    """``c [B, D]``: for each dim i, the head's terms that do not involve ``a^i`` and that
    ``pi_i`` may legally condition on.

    * independent heads: ``b + sum_{j != i} u~_j + sum_{j<k; j,k != i} p~_jk``
    * autoregressive heads: ``b + sum_{j<i} u~_j + sum_{j<k<i} p~_jk`` (only earlier dims: later dims
      depend on ``a^i`` through the policy, and a baseline that does would bias the gradient).
    """
    u, P, b = head.per_dim, head.pair, head.shared  # [B, D], [B, D, D] upper-triangular, [B]
    if autoregressive:
        u_before = torch.cumsum(u, dim=1) - u  # [B, D] sum_{j<i} u~_j
        pair_ending_at = P.sum(dim=1)  # [B, D] sum_{j<k} p~_jk, indexed by k
        pair_before = torch.cumsum(pair_ending_at, dim=1) - pair_ending_at  # [B, D] sum_{j<k<i}
        return b[:, None] + u_before + pair_before
    pair_with_i = P.sum(dim=2) + P.sum(dim=1)  # [B, D] every pair that involves i
    others_u = u.sum(dim=1, keepdim=True) - u  # [B, D]
    others_pair = P.sum(dim=(1, 2))[:, None] - pair_with_i  # [B, D]
    return b[:, None] + others_u + others_pair


def credit_advantages(
    mode: str,
    advantages: torch.Tensor,
    head: HeadOutput | None,
    *,
    autoregressive: bool,
    shared_source: str = "gae",
    surrogate: str = "per_dim",
    action_dims: int | None = None,
    scale: str = "one",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-dim advantages ``A [B, D]`` from the GAE advantage ``advantages [B]``.

    Modes (ALGORITHM.md §5):

    * ``joint``: ``A_i = A_hat`` (standard joint PPO).
    * ``shared_local``: note idea 1, ``A_i = A_shared + Delta_i`` with ``Delta_i = u~_i - mean_j u~_j``
      (so ``sum_i Delta_i = 0``); ``A_shared = A_hat`` (``shared_source='gae'``) or ``b(s)``
      (``'head'``). ``surrogate='mean'`` puts the mean over dims (= ``A_shared``) in every column, the
      note's literal scalar form, in which the residuals never reach the actor.
    * ``structured``: note idea 2, ``A_i = A_phi(s, a)``.
    * ``counterfactual``: ``A_i = A_hat - c_i`` with :func:`counterfactual_baseline`; an
      action-dependent baseline, unbiased whatever the head learned. ``scale='fitted'``:
      ``A_i = A_hat - beta_i c_i`` with :func:`baseline_scale` over the batch (``mask``: valid rows).

    ``action_dims`` is needed only for ``joint`` without a head.
    """
    if mode not in CREDIT_MODES:
        raise ValueError(f"credit mode must be one of {CREDIT_MODES}, got {mode!r}")
    adv = advantages.detach()
    if mode == "joint":
        D = head.per_dim.shape[1] if head is not None else action_dims
        if D is None:
            raise ValueError("credit_advantages('joint', head=None) needs action_dims")
        return adv[:, None].expand(-1, D).clone()
    if head is None:
        raise ValueError(f"credit mode {mode!r} needs the structured advantage head")
    head = head.detach()
    D = head.per_dim.shape[1]
    if mode == "shared_local":
        if shared_source not in SHARED_SOURCES:
            raise ValueError(f"shared_source must be one of {SHARED_SOURCES}, got {shared_source!r}")
        if surrogate not in SURROGATES:
            raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
        shared = adv if shared_source == "gae" else head.shared  # [B]
        delta = head.per_dim - head.per_dim.mean(dim=1, keepdim=True)  # [B, D], sums to 0 over dims
        eff = shared[:, None] + delta  # [B, D]
        if surrogate == "mean":
            eff = eff.mean(dim=1, keepdim=True).expand(-1, D).clone()
        return eff
    if mode == "structured":
        return head.total[:, None].expand(-1, D).clone()
    if scale not in BASELINE_SCALES:
        raise ValueError(f"scale must be one of {BASELINE_SCALES}, got {scale!r}")
    c = counterfactual_baseline(head, autoregressive=autoregressive)
    if scale == "fitted":
        c = c * baseline_scale(adv, c, mask)[None, :]
    return adv[:, None] - c
