"""The PPO loop on Accelerate, in CleanRL's order: rollout -> advantages (GAE, head fit, credit) -> update epochs
-> log / evaluate / save.

Reads top to bottom (STYLE.md rule 1); each step is one named function: setup and checkpoints in
ppo_setup.py, advantages and the head's fit in advantages.py, the epochs and the loss in ppo_update.py, metrics
and plots in ppo_log.py, learning rates in schedule.py. Each process steps ``num_envs / world_size`` envs;
advantages are normalised across processes; DDP synchronises gradients; the head-only fit averages its
gradients by hand (it runs outside the DDP forward).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoints import layout, list_checkpoints, resolve
from ..checkpoints.locate import read_config, run_dir_of, verify
from ..checkpoints.rundir import resumed_config
from ..checkpoints.store import CheckpointError
from ..checkpoints.trainer_state import completed_updates
from ..config import TrainConfig
from ..diagnostics import plot_learning_curve
from ..errors import UserError
from ..eval import evaluate_during_training
from ..policies.agent import Agent
from .accel import any_rank, claim, make_accelerator
from .advantages import prepare_batch
from .group_rollout import collect_group_episodes, group_seeds
from .metrics_log import read_metrics
from .ppo_log import plot_credit_of, progress_postfix, rollout_metrics
from .ppo_setup import PPORun, save_checkpoint, start_run
from .ppo_update import ppo_epochs
from .rollout import collect_rollout, executed_env_steps
from .schedule import adapt_lr_scale, set_learning_rates

__all__ = ["TIMING_PREFIXES", "NonFiniteLossError", "TrainResult", "train"]

# metrics that measure time, not learning: excluded when runs are compared number for number
TIMING_PREFIXES = ("time/", "charts/SPS")


class NonFiniteLossError(UserError, RuntimeError):
    """Too many updates in a row had a non-finite loss; the message names the last good checkpoint."""


@dataclass
class TrainResult:
    run_dir: Path
    agent: Agent | None  # None when a resumed run had nothing left to do
    history: list[dict[str, float]] = field(default_factory=list)
    finished_before: int | None = None  # resume of a finished run: the update it had reached

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def train(cfg: TrainConfig, command: str | None = None) -> TrainResult:
    """Run PPO with the structured advantage as configured; returns the run dir, agent and metrics.
    ``command``: the command line that started the run (the CLI passes it; saved as ``command.txt``).

    ``resume=`` continues in the run dir of the checkpoint it names (checkpoints/rundir.py says what may
    differ from that run's settings); a new run claims ``cfg.run_dir`` and refuses one that holds a run
    unless ``overwrite=true``."""
    cfg.validate()
    # the weights to start from: a checkpoint of this run (resume) or of another (init_from); a run dir
    # or hf://org/name resolves to a checkpoint dir here, once
    start = resolve(cfg.resume) if cfg.resume else resolve(cfg.init_from) if cfg.init_from else None
    if cfg.resume:
        run_dir = run_dir_of(start)
        if run_dir is None:
            raise CheckpointError(f"resume={cfg.resume} is not a checkpoint of a run dir; start a new run from it "
                                  "with init_from= instead")
        verify(start, resume=True)  # a damaged file is named here, with the intact checkpoint to use instead
        cfg = resumed_config(cfg, read_config(start), run_dir)
        done = completed_updates(start)
        if done >= cfg.num_updates:
            return TrainResult(run_dir, None, read_metrics(run_dir / layout.METRICS), finished_before=done)
    accelerator = make_accelerator(cfg, cfg.ppo.gradient_accumulation_steps)
    lock = claim(cfg, accelerator)
    started = False
    try:
        result = _train(cfg, start_run(cfg, command, start, accelerator, lock))
        started = True
        return result
    finally:
        if lock is not None:
            lock.release(keep_empty=started or cfg.resume is not None)


def _train(cfg: TrainConfig, run: PPORun) -> TrainResult:
    accelerator, core, counters = run.accelerator, run.core, run.counters
    for update in range(counters["update"] + 1, cfg.num_updates + 1):
        t_start = time.perf_counter()
        set_learning_rates(run.optimizer, cfg, update, counters.get("lr_scale", 1.0))  # absent in older checkpoints

        # 1. rollout (no grad): num_steps decisions of every env (termination / truncation / autoreset kept apart
        # until GAE), or for GRPO one whole episode per env, each group of envs from one initial state
        run.agent.eval()
        rollout, outcomes = _rollout(run, cfg, update)
        run.agent.train()
        env_steps = executed_env_steps(rollout)
        counters["global_step"] += env_steps
        t_rollout = time.perf_counter()

        # 2. advantages (GAE or group outcomes), the structured head's scoring and fit, per-dim credit
        batch, head_out, metrics, nan_seen = prepare_batch(core, run.optimizer, rollout, cfg, accelerator, outcomes)

        # 3. PPO epochs x minibatches; critic warm-up: the first updates fit the value head only, so the policy's
        # first steps follow fitted advantages rather than a fresh value head's noise
        train_policy = update > cfg.ppo.critic_warmup_updates
        # GRPO may drop every group of an update (on every process: skip it; on some: they step on a no-weight row)
        kept = bool(batch["valid"].any())
        if not nan_seen and any_rank(accelerator, kept):
            update_metrics, nan_seen = ppo_epochs(run.agent, run.optimizer, batch, cfg, accelerator, train_policy)
            metrics.update(update_metrics)
        if cfg.ppo.lr_schedule == "adaptive" and not nan_seen and train_policy:
            # the KL is averaged across processes already, so every rank steers to the same rate
            counters["lr_scale"] = adapt_lr_scale(counters.get("lr_scale", 1.0), metrics["losses/approx_kl"],
                                                  cfg.ppo.desired_kl)
        t_update = time.perf_counter()

        # 4. non-finite guard (skip, warn, abort after several in a row), then log / plot / evaluate / save
        counters["nan_streak"] = counters["nan_streak"] + 1 if nan_seen else 0
        if nan_seen:
            warnings.warn(f"update {update}: non-finite loss or gradient; update skipped "
                          f"({counters['nan_streak']}/{cfg.ppo.max_nan_updates} in a row)", stacklevel=1)
        counters["update"] = update
        metrics.update(rollout_metrics(rollout, batch, head_out, accelerator, critic=core.value_head is not None))
        metrics.update({
            "charts/learning_rate": run.optimizer.param_groups[0]["lr"], "charts/update": float(update),
            "charts/global_step": float(counters["global_step"]), "charts/skipped_update": float(nan_seen),
            "charts/SPS": env_steps / max(t_update - t_start, 1e-9),
            "time/rollout_s": t_rollout - t_start, "time/update_s": t_update - t_rollout,
        })
        _log_evaluate_save(run, cfg, update, metrics, head_out if kept else None, nan_seen)
    run.pbar.close()
    if accelerator.is_main_process and run.history.records and cfg.logging.plot_every > 0:
        plot_learning_curve(run.history.records, cfg.run_dir / layout.PLOTS / "learning_curve.png",
                            title=f"{cfg.name} ({cfg.credit.mode})")
    accelerator.end_training()
    return TrainResult(cfg.run_dir, core, run.history.records)


def _rollout(run: PPORun, cfg: TrainConfig, update: int):
    """``(rollout, outcomes)``: outcomes are the group episodes' returns and successes under GRPO, else None."""
    device = run.accelerator.device
    if cfg.advantage.estimator != "grpo":
        return collect_rollout(run.core, run.envs, run.state, cfg.ppo.num_steps, device), None
    seeds = group_seeds(cfg.seed, run.accelerator.process_index, update, run.envs.num_envs, cfg.advantage.group_size)
    return collect_group_episodes(run.core, run.envs, run.state, seeds, cfg.max_decisions, device)


def _log_evaluate_save(run: PPORun, cfg: TrainConfig, update: int, metrics: dict[str, float], head_out,
                       nan_seen: bool) -> None:
    """The end of an update: evaluation (``eval.every``), metrics, credit plots, checkpoint, the progress bar;
    raises :class:`NonFiniteLossError` after ``ppo.max_nan_updates`` skipped updates in a row."""
    accelerator, counters, log = run.accelerator, run.counters, cfg.logging
    last = update == cfg.num_updates
    is_log_step = update % log.log_every == 0 or last
    is_plot_step = log.plot_every > 0 and head_out is not None and (update % log.plot_every == 0 or last)
    is_save_step = not nan_seen and ((log.checkpoint_every > 0 and update % log.checkpoint_every == 0) or last)
    if cfg.eval.every > 0 and (update % cfg.eval.every == 0 or last):
        # main process only, on its own envs; every RNG stream is restored, so training is unchanged
        if accelerator.is_main_process:
            metrics.update(evaluate_during_training(run.core, cfg, update))
        accelerator.wait_for_everyone()
        is_log_step = True  # the evaluation's numbers are always logged
    if is_log_step:
        run.history.append(metrics)
        accelerator.log(metrics, step=counters["global_step"])
    if is_plot_step and accelerator.is_main_process:
        plot_credit_of(head_out, cfg.run_dir, update, counters["global_step"], accelerator, cfg)
    if is_save_step:
        save_checkpoint(run, cfg)
    if counters["nan_streak"] >= cfg.ppo.max_nan_updates:
        _abort_non_finite(run, cfg, update)
    run.pbar.update(1)
    run.pbar.set_postfix(progress_postfix(metrics))


def _abort_non_finite(run: PPORun, cfg: TrainConfig, update: int) -> None:
    last = resolve(cfg.run_dir) if list_checkpoints(cfg.run_dir) else None
    run.pbar.close()
    run.accelerator.end_training()
    where = (f"the last good checkpoint is {last} (resume={last} after the fix)" if last is not None
             else "no checkpoint was saved before it")
    raise NonFiniteLossError(
        f"{run.counters['nan_streak']} updates in a row had a non-finite loss (update {update}); stopped: "
        f"{where}. Lower ppo.learning_rate or ppo.max_grad_norm, or check the rewards.")
