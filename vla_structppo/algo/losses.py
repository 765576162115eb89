"""PPO surrogate with joint ratio and per-dim gradient routing, value loss, head loss, advantage
normalisation (ALGORITHM.md §6-§7).

Ratio granularities of :func:`ppo_policy_loss` (``credit.ratio``), each token's gradient through its own log-prob:

* ``joint`` (the note's design): one ratio over all D tokens of a decision.
* ``action``: one ratio per env-step action of an action chunk (the ``step_dims`` tokens of one step: RLinf's
  ``action_level``, VLA-RL's and RL4VLA's sum of the 7 tokens), ``rho_i = exp(dlogp_i + sg(sum_{j in step(i),
  j != i} dlogp_j))``. Without chunks it equals ``joint``.
* ``token``: per-token ratio ``r_i = exp(dlogp_i)`` clipped per token (SimpleVLA-RL, RLinf's ``token_level``);
  outside the note's design.
* ``token_clip``: the joint importance weight with each dim's clip decided by its own ratio, the form of HAPPO's
  per-agent objective (Kuba et al., ICLR 2022), ``L = -mean_B sum_i sg(r / r_i) min(r_i A_i, clip(r_i) A_i)``:
  unclipped, dim i's gradient is ``r A_i grad log pi_i`` as under ``joint``; only the clip decision moves to
  ``r_i``. Outside the note's design.

The anchors' extensions (SimpleVLA-RL / RLinf / DAPO): ``clip_coef_high`` clips the ratio to ``[1 - eps, 1 +
eps_high]`` ("clip-higher", 0.2 / 0.28); ``dual_clip = c`` (Ye et al. 2020, 3.0) bounds a negative advantage's
term below by ``c A`` (``max(min(rho A, clip(rho) A), c A)`` for ``A < 0``), so a huge ratio on a bad action
cannot dominate; ``aggregation``: ``sample_mean`` (the sum over a sample's tokens, averaged over samples: the
note's form) or ``token_mean`` (every counted token weighted alike: SimpleVLA-RL's ``masked_mean``; equal to
``sample_mean / D`` when every sample has all D tokens).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .heads import HeadOutput

__all__ = ["AGGREGATIONS", "RATIOS", "head_loss", "normalize_advantages", "ppo_policy_loss", "value_loss"]

RATIOS = ("joint", "action", "token", "token_clip")
AGGREGATIONS = ("sample_mean", "token_mean")


MAX_LOG_RATIO = 20.0


def ppo_policy_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    clip_coef: float,
    ratio: str = "joint",
    mask: torch.Tensor | None = None,
    *,
    clip_coef_high: float | None = None,
    dual_clip: float | None = None,
    aggregation: str = "sample_mean",
    token_mask: torch.Tensor | None = None,
    step_dims: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate over D action dims (the ratio granularities and the anchors' extensions: module doc).

    ``ratio='joint'`` (the note's design): ``rho_i = exp(dlogp_i + sg(sum_{j != i} dlogp_j))`` has the
    value of the joint ratio ``r`` and a gradient through dim i only, and::

        L = -mean_B sum_i min(rho_i A_i, clip(rho_i, 1-eps, 1+eps) A_i)

    When every column of ``A`` equals ``A_hat`` this has exactly the gradient of the textbook joint
    surrogate ``-min(r A_hat, clip(r) A_hat)`` (its value is D times the textbook value).

    Args:
        logp_new, logp_old: ``[B, D]`` per-dim log-probs under the current / behaviour policy.
        advantages: ``[B, D]`` per-dim advantages (credit, already normalised if wanted).
        clip_coef: ``eps``.
        mask: optional ``[B]`` bool/float of samples that count (autoreset steps do not).
        token_mask: optional ``[B, D]`` bool of the tokens that count (the tokens of chunk steps that were never
            executed because the episode ended inside the chunk do not: they take no part in the ratio or loss).
        step_dims: tokens per env step, for ``ratio='action'``.

    Returns:
        ``(loss, metrics)`` with ``approx_kl`` (k3 estimator of KL(old||new) on the joint ratio,
        http://joschu.net/blog/kl-approx.html), ``clipfrac`` and ``ratio_mean``, all detached.
    """
    if ratio not in RATIOS:
        raise ValueError(f"ratio must be one of {RATIOS}, got {ratio!r}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    dlogp = logp_new - logp_old.detach()  # [B, D]
    if token_mask is not None:  # tokens that were never executed: no ratio, no gradient
        dlogp = dlogp * token_mask.to(dlogp.dtype)
    adv = advantages.detach()
    rho = _routed_ratios(dlogp, ratio, step_dims)  # [B, D]
    high = clip_coef if clip_coef_high is None else clip_coef_high
    terms = torch.min(rho * adv, torch.clamp(rho, 1.0 - clip_coef, 1.0 + high) * adv)  # [B, D]
    if dual_clip is not None:  # a negative advantage's term is bounded below by c A
        terms = torch.where(adv < 0, torch.max(terms, dual_clip * adv), terms)
    if ratio == "token_clip":
        # the other dims' ratio as a constant weight: the importance weight stays the joint one
        total = dlogp.sum(dim=1, keepdim=True)
        terms = torch.exp((total - dlogp).detach().clamp(max=MAX_LOG_RATIO)) * terms
    if token_mask is not None:
        terms = terms * token_mask.to(terms.dtype)
    per_sample = -terms.sum(dim=1)  # [B]
    weights = _mask_weights(mask, per_sample)
    if aggregation == "sample_mean":
        loss = (per_sample * weights).sum()
    else:
        tokens = torch.ones_like(terms) if token_mask is None else token_mask.to(terms.dtype)
        if mask is not None:
            tokens = tokens * mask.to(terms.dtype)[:, None]
        loss = -(terms * tokens).sum() / tokens.sum().clamp_min(1.0)
    with torch.no_grad():
        outside = (rho < 1.0 - clip_coef) | (rho > 1.0 + high) if clip_coef_high is not None \
            else (rho - 1.0).abs() > clip_coef  # [B, D]
    return loss, _surrogate_metrics(dlogp, outside.float(), ratio, weights)


def _routed_ratios(dlogp: torch.Tensor, ratio: str, step_dims: int | None) -> torch.Tensor:
    """``rho [B, D]``: each token's ratio value (joint, its step's, or its own) with the gradient through the token's
    own log-prob only (ALGORITHM.md §6)."""
    if ratio == "joint":
        total = dlogp.sum(dim=1, keepdim=True)  # [B, 1]
        log_rho = dlogp + (total - dlogp).detach()  # [B, D], value = joint log-ratio
    elif ratio == "action":
        log_rho = dlogp + (_step_sums(dlogp, step_dims) - dlogp).detach()  # [B, D], value = its step's log-ratio
    else:
        log_rho = dlogp  # [B, D]
    # with many dims a runaway step can push the joint log-ratio past float32's exp range (D=128 at a D=7
    # learning rate reaches ~200): cap it so the loss stays finite; a capped term has no gradient, like a
    # clipped one, and nothing changes below ratio e^20
    return torch.exp(log_rho.clamp(max=MAX_LOG_RATIO))


@torch.no_grad()
def _surrogate_metrics(dlogp: torch.Tensor, outside: torch.Tensor, ratio: str, weights: torch.Tensor
                       ) -> dict[str, torch.Tensor]:
    """``approx_kl`` (k3 on the joint ratio), ``clipfrac`` (the joint ratio's, or the mean over tokens) and
    ``ratio_mean``, averaged over the counted samples."""
    log_joint = dlogp.sum(dim=1)  # [B]
    approx_kl = (torch.exp(log_joint) - 1.0) - log_joint  # [B]
    clipfrac = outside[:, 0] if ratio == "joint" else outside.mean(dim=1)  # [B]
    return {"approx_kl": (approx_kl * weights).sum(), "clipfrac": (clipfrac * weights).sum(),
            "ratio_mean": (torch.exp(log_joint) * weights).sum()}


def _step_sums(dlogp: torch.Tensor, step_dims: int | None) -> torch.Tensor:
    """``[B, D]``: each token's sum of ``dlogp`` over the tokens of its env step (``step_dims`` consecutive ones)."""
    B, D = dlogp.shape
    if not step_dims or D % step_dims:
        raise ValueError(f"ratio='action' needs step_dims dividing the {D} tokens, got {step_dims}")
    sums = dlogp.reshape(B, D // step_dims, step_dims).sum(dim=2, keepdim=True)  # [B, H, 1]
    return sums.expand(-1, -1, step_dims).reshape(B, D)


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
