"""What users look at (ALGORITHM.md §9): per-dim credit statistics, the pairwise heatmap, explained
variances, and the PNG that shows them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .algo.heads import HeadOutput

__all__ = ["actor_variance_ratio", "credit_summary", "explained_variance", "plot_credit", "plot_learning_curve", "variance_shares"]


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    """``1 - Var[target - pred] / Var[target]`` (SB3's definition; nan when the target is constant)."""
    var = torch.var(target.double())
    if var <= 0:
        return float("nan")
    return float(1.0 - torch.var((target - pred).double()) / var)


def actor_variance_ratio(credit: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """``mean_i Var[A_i] / Var[Â]`` over the batch, before normalisation: below 1 the credit mode gives the actor
    less noisy per-dim advantages than joint PPO's ``Â``, above 1 it adds noise (e.g. a badly fitted head)."""
    if mask is not None:
        credit, advantages = credit[mask], advantages[mask]
    var = torch.var(advantages.detach().double()) if advantages.numel() > 1 else torch.zeros(())
    if var <= 0:
        return float("nan")
    return float(torch.var(credit.detach().double(), dim=0).mean() / var)


def variance_shares(head: HeadOutput, advantages: torch.Tensor) -> dict[str, float]:
    """How the head splits the variance of the GAE advantage ``Â`` over a batch, each as a share of Var[Â]:

    * ``credit/action_variance_share`` — Var of the action terms ``Σ_i u~_i + Σ_{i<j} p~_ij``: the most an
      action-dependent baseline (counterfactual credit) can take out of the actor's advantage; a state
      baseline (the value function) already removes the state part, and nothing removes the rest;
    * ``credit/state_variance_share`` — Var of ``b(s)``;
    * ``credit/residual_variance_share`` — Var[Â − Aφ]: what the head does not explain (with long horizons,
      the noise of future rewards — Tucker et al.'s reason action-dependent baselines gain little there).

    nan when Â is constant over the batch."""
    target = advantages.detach().double()
    var = torch.var(target) if target.numel() > 1 else torch.zeros((), dtype=torch.float64)
    names = ("credit/action_variance_share", "credit/state_variance_share", "credit/residual_variance_share")
    if var <= 0:
        return dict.fromkeys(names, float("nan"))
    action = head.per_dim.detach().double().sum(-1) + head.pair.detach().double().sum((-1, -2))
    parts = (action, head.shared.detach().double(), target - head.total.detach().double())
    return {name: float(torch.var(part) / var) for name, part in zip(names, parts, strict=True)}


def credit_summary(head: HeadOutput) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Scalars ``credit/...`` plus ``(per_dim_table [4, D], pair_heat [D, D])`` for the plot.

    Per dim: mean, std, min, max of ``u~_i`` and of ``Delta_i = u~_i - mean_j u~_j`` (whose mean must
    sit at 0); pairwise: ``E|p~_ij|``.
    """
    u = head.per_dim.detach().double()  # [B, D]
    delta = u - u.mean(dim=1, keepdim=True)
    pair_heat = head.pair.detach().double().abs().mean(0)  # [D, D]
    scalars: dict[str, float] = {}
    for i in range(u.shape[1]):
        for name, x in (("u", u[:, i]), ("delta", delta[:, i])):
            scalars[f"credit/{name}_mean_{i}"] = float(x.mean())
            scalars[f"credit/{name}_std_{i}"] = float(x.std()) if len(x) > 1 else 0.0
            scalars[f"credit/{name}_min_{i}"] = float(x.min())
            scalars[f"credit/{name}_max_{i}"] = float(x.max())
    D = u.shape[1]
    iu = torch.triu_indices(D, D, 1)
    scalars["credit/pair_abs_mean"] = float(pair_heat[iu[0], iu[1]].mean()) if D > 1 else 0.0
    scalars["credit/shared_mean"] = float(head.shared.detach().mean())
    table = torch.stack([u.abs().mean(0), u.std(0) if len(u) > 1 else u[0] * 0, delta.mean(0), delta.std(0) if len(u) > 1 else u[0] * 0])
    return scalars, table.cpu().numpy(), pair_heat.cpu().numpy()


def plot_credit(per_dim: np.ndarray, pair_heat: np.ndarray, path: str | Path | None, title: str = "",
                step_dims: int | None = None) -> np.ndarray:
    """Bar chart of ``E|u~_i|`` (with std) and heatmap of ``E|p~_ij|``; saved to ``path``; returns
    the image as ``[H, W, 3]`` uint8 (for TensorBoard). ``step_dims``: an action chunk's dims per step, so the
    tokens are labelled ``(step, dim)`` and the steps' boundaries drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    D = per_dim.shape[1]
    chunked = step_dims is not None and 0 < step_dims < D and D % step_dims == 0
    if chunked and D > 16:  # wide chunks: one tick label per step, at its first token
        ticks, labels = np.arange(0, D, step_dims), [f"{t},0" for t in range(D // step_dims)]
    else:
        ticks = np.arange(D)
        labels = [f"{i // step_dims},{i % step_dims}" for i in ticks] if chunked else [str(i) for i in ticks]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6) if D <= 16 else (12, 5), dpi=90)
    ax1.bar(np.arange(D), per_dim[0], yerr=per_dim[1], color="tab:blue", alpha=0.8, capsize=3 if D <= 16 else 0)
    style = {"rotation": 90, "fontsize": 7} if chunked else {}
    ax1.set_xticks(ticks, labels, **style)
    ax1.set_xlabel("action token (step, dim)" if chunked else "action dim i")
    ax1.set_ylabel("E|u~_i|  (bar: std)")
    ax1.set_title("per-dim credit")
    im = ax2.imshow(np.triu(pair_heat, 1), cmap="viridis")
    ax2.set_xticks(ticks, labels, **style)
    ax2.set_yticks(ticks, labels, **({"fontsize": 7} if chunked else {}))
    ax2.set_xlabel("j (step, dim)" if chunked else "j")
    ax2.set_ylabel("i (step, dim)" if chunked else "i")
    if chunked:  # the chunk's steps
        for b in np.arange(step_dims, D, step_dims) - 0.5:
            ax1.axvline(b, color="grey", lw=0.6)
            ax2.axvline(b, color="white", lw=0.4)
            ax2.axhline(b, color="white", lw=0.4)
    ax2.set_title("pairwise E|p~_ij| (i<j)")
    fig.colorbar(im, ax=ax2, fraction=0.046)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    plt.close(fig)
    return image


def plot_learning_curve(records: list[dict[str, float]], path: str | Path, *, title: str = "",
                        evals: list[tuple[float, float, float, float, str]] = ()) -> None:
    """Training curve from ``metrics.jsonl`` records: normalised return (or success rate) against
    env steps, plus evaluation points ``(step, rate, ci_low, ci_high, label)`` with their 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # tasks of known structure have an exact optimum (normalised return); simulators have success
    key = "rollout/normalized_return" if any("rollout/normalized_return" in r for r in records) \
        else "rollout/success_rate"
    pts = [(r["charts/global_step"], r[key]) for r in records if key in r]
    fig, ax = plt.subplots(figsize=(6.5, 3.8), dpi=90)
    if pts:
        x, y = zip(*pts)
        ax.plot(x, y, color="tab:blue", alpha=0.5, label=f"training rollouts ({key.split('/')[1]})")
        if len(y) >= 5:  # a moving average makes the trend readable through rollout noise
            k = max(len(y) // 10, 3)
            smooth = np.convolve(y, np.ones(k) / k, mode="valid")
            ax.plot(x[k - 1:], smooth, color="tab:blue", label=f"moving average ({k})")
    for step, rate, lo, hi, label in evals:
        ax.errorbar([step], [rate], yerr=[[rate - lo], [hi - rate]], fmt="o", capsize=4, label=label)
    ax.set_xlabel("env steps")
    ax.set_ylabel("success rate" if "success" in key else "normalised return")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
