"""PPO surrogate with joint ratio and per-dim gradient routing, value loss, head loss, advantage
normalisation (ALGORITHM.md §6-§7)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .heads import HeadOutput

__all__ = ["RATIOS", "head_loss", "normalize_advantages", "ppo_policy_loss", "value_loss"]

RATIOS = ("joint", "token", "token_clip")


MAX_LOG_RATIO = 20.0


def ppo_policy_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    clip_coef: float,
    ratio: str = "joint",
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate over D action dims.

    ``ratio='joint'`` (the note's design): ``rho_i = exp(dlogp_i + sg(sum_{j != i} dlogp_j))`` has the
    value of the joint ratio ``r`` and a gradient through dim i only, and::

        L = -mean_B sum_i min(rho_i A_i, clip(rho_i, 1-eps, 1+eps) A_i)

    When every column of ``A`` equals ``A_hat`` this has exactly the gradient of the textbook joint
    surrogate ``-min(r A_hat, clip(r) A_hat)`` (its value is D times the textbook value).

    ``ratio='token'``: per-token ratio ``r_i = exp(dlogp_i)`` clipped per token, the comparison baseline
    some VLA-RL systems use; outside the note's design.

    ``ratio='token_clip'``: the joint importance weight with each dim's clip decided by its own ratio,
    the form of HAPPO's per-agent objective (Kuba et al., ICLR 2022)::

        L = -mean_B sum_i sg(r / r_i) min(r_i A_i, clip(r_i, 1-eps, 1+eps) A_i)

    Unclipped, dim i's gradient is ``r A_i grad log pi_i`` exactly as under ``joint``; only the clip
    decision moves from the joint ratio to ``r_i``. It separates the two things ``token`` changes at once
    (the weight and the clip decision). Outside the note's design.

    Args:
        logp_new, logp_old: ``[B, D]`` per-dim log-probs under the current / behaviour policy.
        advantages: ``[B, D]`` per-dim advantages (credit, already normalised if wanted).
        clip_coef: ``eps``.
        mask: optional ``[B]`` bool/float of samples that count (autoreset steps do not).

    Returns:
        ``(loss, metrics)`` with ``approx_kl`` (k3 estimator of KL(old||new) on the joint ratio,
        http://joschu.net/blog/kl-approx.html), ``clipfrac`` and ``ratio_mean``, all detached.
    """
    if ratio not in RATIOS:
        raise ValueError(f"ratio must be one of {RATIOS}, got {ratio!r}")
    dlogp = logp_new - logp_old.detach()  # [B, D]
    adv = advantages.detach()
    total = dlogp.sum(dim=1, keepdim=True)  # [B, 1]
    if ratio == "joint":
        log_rho = dlogp + (total - dlogp).detach()  # [B, D], value = joint log-ratio
    else:
        log_rho = dlogp  # [B, D]
    # with many dims a runaway step can push the joint log-ratio past float32's exp range (D=128 at a D=7
    # learning rate reaches ~200): cap it so the loss stays finite; a capped term has no gradient, like a
    # clipped one, and nothing changes below ratio e^20
    rho = torch.exp(log_rho.clamp(max=MAX_LOG_RATIO))
    unclipped = rho * adv
    clipped = torch.clamp(rho, 1.0 - clip_coef, 1.0 + clip_coef) * adv
    terms = torch.min(unclipped, clipped)  # [B, D]
    if ratio == "token_clip":
        # the other dims' ratio as a constant weight: the importance weight stays the joint one
        terms = torch.exp((total - dlogp).detach().clamp(max=MAX_LOG_RATIO)) * terms
    per_sample = -terms.sum(dim=1)  # [B]
    weights = _mask_weights(mask, per_sample)
    loss = (per_sample * weights).sum()

    with torch.no_grad():
        log_joint = dlogp.sum(dim=1)  # [B]
        approx_kl = ((torch.exp(log_joint) - 1.0) - log_joint)  # [B]
        outside = ((rho - 1.0).abs() > clip_coef).float()  # [B, D]
        clipfrac = outside[:, 0] if ratio == "joint" else outside.mean(dim=1)  # [B]
        metrics = {
            "approx_kl": (approx_kl * weights).sum(),
            "clipfrac": (clipfrac * weights).sum(),
            "ratio_mean": (torch.exp(log_joint) * weights).sum(),
        }
    return loss, metrics


def _mask_weights(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Per-sample weights that average over the samples that count."""
    if mask is None:
        return torch.full_like(like, 1.0 / like.shape[0])
    m = mask.to(like.dtype)
    return m / m.sum().clamp_min(1.0)


def value_loss(
    values: torch.Tensor,
    returns: torch.Tensor,
    old_values: torch.Tensor | None = None,
    clip_coef: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``1/2 (V - R)^2``; with ``clip_coef`` the PPO2 clipped form ``1/2 max((V-R)^2, (V_clip-R)^2)``."""
    err = (values - returns) ** 2
    if clip_coef is not None and old_values is not None:
        v_clipped = old_values + torch.clamp(values - old_values, -clip_coef, clip_coef)
        err = torch.max(err, (v_clipped - returns) ** 2)
    return 0.5 * (err * _mask_weights(mask, err)).sum()


def head_loss(
    head: HeadOutput,
    target: torch.Tensor,
    *,
    lambda_pair: float = 0.0,
    lambda_1: float = 0.0,
    lambda_2: float = 0.0,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Regression of the structured head on the GAE advantage (ALGORITHM.md §7)::

        L_adv = mean (A_phi(s,a) - A_hat)^2 + lambda_pair mean sum_{i<j} p~_ij^2
              + lambda_2 mean_i u~_i^2 + lambda_1 (sum_i u~_i)^2

    ``lambda_1`` is the note's zero-sum penalty on the per-dim terms; it does work only with
    ``centering='none'`` (centered terms already have zero weighted mean per dim).
    """
    w = _mask_weights(mask, head.total)
    mse = ((head.total - target.detach()) ** 2 * w).sum()
    pair_l2 = ((head.pair**2).sum(dim=(1, 2)) * w).sum()
    per_dim_l2 = ((head.per_dim**2).mean(dim=1) * w).sum()
    zero_sum = ((head.per_dim.sum(dim=1) ** 2) * w).sum()
    loss = mse + lambda_pair * pair_l2 + lambda_2 * per_dim_l2 + lambda_1 * zero_sum
    return loss, {"adv_mse": mse.detach(), "pair_l2": pair_l2.detach(), "per_dim_l2": per_dim_l2.detach()}


def normalize_advantages(
    credit: torch.Tensor,
    reference: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    eps: float = 1e-8,
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """One rule for every credit mode: ``(A_i - mean_B(A_i)) / std(A_hat)``.

    The scale is the standard deviation of the GAE advantage ``reference [B]`` over the whole batch of every
    rank (``all_reduce_sum`` sums a tensor across ranks), so the modes differ only in what they credit, never in
    how much. Each dim's column is centred on its own batch mean: for ``joint`` that is CleanRL's
    ``(A - mean) / std``; for a mode whose credit has another mean than ``A_hat`` it removes an offset that
    would otherwise reinforce (or punish) every taken action alike -- e.g. counterfactual credit, whose
    baseline already takes out the mean that GAE left in ``A_hat`` (a value function lagging behind the
    returns: a mean of -2.7 std on Pusher), would otherwise carry a +2.7 std offset. A per-batch constant is a
    baseline: no bias beyond O(1/B). ``credit [B, D]``.
    """
    ref = reference.detach().double()
    values = credit.detach().double()
    m = torch.ones_like(ref) if mask is None else mask.to(ref.dtype)
    stats = torch.cat([torch.stack([(ref * m).sum(), (ref * ref * m).sum(), m.sum()]), (values * m[:, None]).sum(0)])
    if all_reduce_sum is not None:
        stats = all_reduce_sum(stats)
    n = stats[2].clamp_min(1.0)
    mean = stats[0] / n
    # unbiased variance, as torch.std
    var = ((stats[1] - n * mean**2) / (n - 1.0).clamp_min(1.0)).clamp_min(0.0)
    std = var.sqrt()
    column_mean = stats[3:] / n  # [D]
    return ((credit.double() - column_mean) / (std + eps)).to(credit.dtype)
