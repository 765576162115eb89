"""What a PPO update reports: rollout and credit metrics, the credit plots, the progress bar."""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator

from ..algo.heads import HeadOutput
from ..checkpoints import layout
from ..config import TrainConfig
from ..diagnostics import credit_summary, explained_variance, plot_credit, variance_shares
from .accel import all_reduce_sum
from .rollout import Rollout
from .trackers import log_image

__all__ = ["plot_credit_of", "progress_bar", "progress_postfix", "rollout_metrics"]


def rollout_metrics(rollout: Rollout, batch: dict, head_out: HeadOutput | None, accelerator: Accelerator,
                    critic: bool = True) -> dict[str, float]:
    """``rollout/*`` (episodes summed over processes), the value's explained variance (with a critic) and the
    head's credit."""
    eps = rollout.episodes
    sums = torch.tensor([sum(eps.returns), len(eps.returns), sum(eps.optimal), sum(eps.lengths),
                         sum(eps.success), len(eps.success)], dtype=torch.float64, device=accelerator.device)
    sums = all_reduce_sum(accelerator)(sums)
    out: dict[str, float] = {}
    if sums[1] > 0:
        out["rollout/ep_return_mean"] = float(sums[0] / sums[1])
        out["rollout/ep_length_mean"] = float(sums[3] / sums[1])
        out["rollout/episodes"] = float(sums[1])
        if sums[2] > 0:
            # ratio of means: each episode's optimum is its initial potential (envs/structured.py)
            out["rollout/normalized_return"] = float(sums[0] / sums[2])
    if sums[5] > 0:
        out["rollout/success_rate"] = float(sums[4] / sums[5])
    valid = batch["valid"]
    if critic:
        out["losses/explained_variance"] = explained_variance(batch["values"][valid], batch["returns"][valid])
    out["rollout/reward_mean"] = float(rollout.rewards[rollout.valid].mean())
    if head_out is not None and bool(valid.any()):  # GRPO: this process may have kept no group
        out["credit/explained_variance_head"] = explained_variance(head_out.total[valid], batch["advantages"][valid])
        chosen = _select(head_out, valid)
        scalars, _, _ = credit_summary(chosen)
        out.update(scalars)
        out.update(variance_shares(chosen, batch["advantages"][valid]))
    return out


def _select(head_out: HeadOutput, mask: torch.Tensor) -> HeadOutput:
    return HeadOutput(head_out.shared[mask], head_out.per_dim[mask], head_out.pair[mask], head_out.total[mask])


def plot_credit_of(head_out: HeadOutput, run_dir: Path, update: int, step: int, accelerator: Accelerator,
                   cfg: TrainConfig) -> None:
    """The per-dim bars and pairwise heatmap of ``update`` as a PNG in the run dir and on the trackers."""
    _, table, heat = credit_summary(head_out)
    image = plot_credit(table, heat, run_dir / layout.PLOTS / f"credit_{update:06d}.png",
                        title=f"{cfg.name}: update {update} ({cfg.credit.mode})",
                        step_dims=cfg.env.action_dims if cfg.action.chunk_size > 1 else None)
    log_image(accelerator, cfg, "credit/plot", image, step)


def progress_bar(cfg: TrainConfig, accelerator: Accelerator, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=cfg.num_updates, initial=initial, desc=f"train {cfg.name}", unit="upd",
                disable=not (accelerator.is_main_process and cfg.logging.progress_bar), dynamic_ncols=True)


def progress_postfix(metrics: dict[str, float]) -> dict[str, str]:
    """What the progress bar shows after an update: speed, return and, where the task has them, the normalised
    return (the structured task's optimum) and the success rate (simulators)."""
    shown = {"SPS": f"{metrics['charts/SPS']:.0f}", "ret": f"{metrics.get('rollout/ep_return_mean', float('nan')):.3f}"}
    for key, label in (("rollout/normalized_return", "norm"), ("rollout/success_rate", "success")):
        if key in metrics:
            shown[label] = f"{metrics[key]:.2f}"
    return shown
