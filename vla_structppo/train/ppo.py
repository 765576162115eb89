"""The PPO loop on Accelerate: rollout -> GAE -> head fit -> credit -> PPO epochs -> log / plot / save.

Reads top to bottom (STYLE.md rule 1). Each process steps ``num_envs / world_size`` envs; advantages
are normalised across processes; DDP synchronises gradients; the head-only fit averages its
gradients by hand (it runs outside the DDP forward).
"""

from __future__ import annotations

import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..algo import (
    compute_gae,
    credit_advantages,
    head_loss,
    normalize_advantages,
    ppo_policy_loss,
    value_loss,
)
from ..checkpoints import (
    build_agent,
    layout,
    list_checkpoints,
    resolve,
    save_agent,
    torch_load,
    write_atomic_dir,
)
from ..checkpoints.locate import read_config, run_dir_of, verify
from ..checkpoints.rundir import RunLock, resumed_config, run_in_dir
from ..checkpoints.store import CheckpointError, prune, staging_dirs, start_dir, to_torch_tree
from ..config import ConfigError, TrainConfig, to_yaml
from ..diagnostics import (
    actor_variance_ratio,
    credit_summary,
    explained_variance,
    plot_credit,
    plot_learning_curve,
    variance_shares,
)
from ..envs import make_env
from ..errors import UserError
from ..eval import evaluate_during_training
from ..policies.agent import Agent
from ..policies.base import select_batch
from .accel import any_rank, claim, make_accelerator
from .metrics_log import MetricsLog, read_metrics
from .rollout import Rollout, RolloutState, collect_rollout
from .trackers import log_image, start_trackers

__all__ = ["NonFiniteLossError", "TrainResult", "train"]

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


# -- setup helpers -----------------------------------------------------------------------------------
def _param_groups(agent: Agent, cfg: TrainConfig) -> list[dict[str, Any]]:
    value_lr = cfg.ppo.value_learning_rate if cfg.ppo.value_learning_rate is not None else cfg.ppo.learning_rate
    # the policy's group comes first: lr_schedule=adaptive steers that one (_set_learning_rates)
    groups = [{"params": agent.trainable_parameters(), "lr": cfg.ppo.learning_rate, "base_lr": cfg.ppo.learning_rate},
              {"params": list(agent.value_head.parameters()), "lr": value_lr, "base_lr": value_lr}]
    if agent.adv_head is not None:
        groups.append({"params": list(agent.adv_head.parameters()), "lr": cfg.ppo.head_learning_rate,
                       "base_lr": cfg.ppo.head_learning_rate})
    return groups


# lr_schedule: adaptive -- the factor applied per update and the bounds of the policy's learning-rate scale
ADAPTIVE_FACTOR, ADAPTIVE_SCALE_BOUNDS = 1.5, (0.01, 10.0)


def _set_learning_rates(optimizer, cfg: TrainConfig, update: int, adaptive_scale: float) -> None:
    """Every group's rate for ``update``: ``base_lr`` x the schedule's factor. The time schedules (constant, linear,
    cosine) scale every group alike; ``adaptive`` scales the policy's group (the first) by ``adaptive_scale`` (the
    trainer's ``counters["lr_scale"]``, steered by :func:`_adapt_lr_scale`) and leaves the value and head rates."""
    progress = (update - 1) / cfg.num_updates
    schedule = cfg.ppo.lr_schedule
    factor = {"linear": 1.0 - progress, "cosine": 0.5 * (1.0 + math.cos(math.pi * progress))}.get(schedule, 1.0)
    for k, group in enumerate(optimizer.param_groups):
        group["lr"] = group["base_lr"] * (adaptive_scale if schedule == "adaptive" and k == 0 else factor)


def _adapt_lr_scale(scale: float, kl: float, desired_kl: float) -> float:
    """The policy learning rate's next scale under ``lr_schedule: adaptive`` from the update's measured KL."""
    if not math.isfinite(kl):
        return scale
    if kl > 2.0 * desired_kl:
        scale /= ADAPTIVE_FACTOR
    elif kl < 0.5 * desired_kl:
        scale *= ADAPTIVE_FACTOR
    return min(max(scale, ADAPTIVE_SCALE_BOUNDS[0]), ADAPTIVE_SCALE_BOUNDS[1])


def _all_reduce_sum(accelerator: Accelerator):
    def reduce(x: torch.Tensor) -> torch.Tensor:
        return accelerator.reduce(x.to(accelerator.device), reduction="sum") if accelerator.num_processes > 1 else x

    return reduce


# -- the loop --------------------------------------------------------------------------------------
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
        done = int(torch_load(start / layout.TRAINER_STATE)["counters"]["update"])
        if done >= cfg.num_updates:
            return TrainResult(run_dir, None, read_metrics(run_dir / layout.METRICS), finished_before=done)
    accelerator = make_accelerator(cfg, cfg.ppo.gradient_accumulation_steps)
    lock = claim(cfg, accelerator)
    started = False
    try:
        result = _train(cfg, command, start, accelerator, lock)
        started = True
        return result
    finally:
        if lock is not None:
            lock.release(keep_empty=started or cfg.resume is not None)


def _train(cfg: TrainConfig, command: str | None, start: Path | None, accelerator: Accelerator,
           lock: RunLock | None) -> TrainResult:
    rank, world = accelerator.process_index, accelerator.num_processes
    if cfg.env.num_envs % world:
        raise ConfigError(f"env.num_envs={cfg.env.num_envs} must be divisible by the {world} processes")
    run_dir, device = cfg.run_dir, accelerator.device
    set_seed(cfg.seed)  # identical initial weights on every process
    env_seed = cfg.seed * 1_000_003 + rank
    envs = make_env(cfg.env, cfg.env.num_envs // world, seed=env_seed)
    obs_space = envs.single_observation_space
    agent = build_agent(cfg, obs_dim=None if cfg.policy.type == "vla" else obs_space.shape[0], start_from=start)
    # the env executes what the policy's tokens mean; from a checkpoint, observation statistics continue
    agent.configure_env(envs, evaluation=False)
    # the run is known to start (envs made, model loaded): only now is its dir written
    if lock is not None:
        run_in_dir(cfg, lock)
        (run_dir / layout.CONFIG).write_text(to_yaml(cfg))
        if command and not cfg.resume:  # how the run was started, for the model card's "reproduce" line
            (run_dir / layout.COMMAND).write_text(command + "\n")
    accelerator.wait_for_everyone()
    optimizer = torch.optim.Adam(_param_groups(agent, cfg), eps=1e-5)
    agent, optimizer = accelerator.prepare(agent, optimizer)
    core: Agent = accelerator.unwrap_model(agent)
    set_seed(cfg.seed + rank)  # each process samples its own actions and minibatches
    obs, _ = envs.reset(seed=env_seed)
    state = RolloutState(obs if isinstance(obs, dict) else np.asarray(obs), np.zeros(envs.num_envs, bool))
    if cfg.policy.type == "vla":
        core.policy.temperature = cfg.model.rollout_temperature
    counters = {"update": 0, "global_step": 0, "nan_streak": 0}
    if cfg.resume:
        counters = _load_trainer_state(start, accelerator, core, optimizer, envs, state)

    history = MetricsLog(run_dir / layout.METRICS, accelerator.is_main_process, keep_until=counters["update"])
    start_trackers(accelerator, cfg, "ppo")
    pbar = _progress(cfg, accelerator, counters["update"])

    for update in range(counters["update"] + 1, cfg.num_updates + 1):
        t_start = time.perf_counter()
        _set_learning_rates(optimizer, cfg, update, counters.get("lr_scale", 1.0))  # absent in older checkpoints

        # 1. rollout (no grad), 2. GAE with termination / truncation / autoreset kept apart
        agent.eval()
        rollout = collect_rollout(core, envs, state, cfg.ppo.num_steps, device)
        agent.train()
        counters["global_step"] += cfg.batch_size
        t_rollout = time.perf_counter()
        advantages, returns = compute_gae(
            rollout.rewards * cfg.ppo.reward_scale, rollout.values, rollout.next_value, rollout.terminated, rollout.truncated,
            gamma=cfg.ppo.gamma, gae_lambda=cfg.ppo.gae_lambda, final_values=rollout.final_values,
            valid=rollout.valid,
        )
        batch = _flatten(rollout, advantages, returns)

        # 3. fit the structured head on the fresh batch, 4. per-dim credit for the actor
        metrics: dict[str, float] = {}
        nan_seen = False
        head_out = None
        if core.adv_head is not None:
            # credit_from=previous: the credit comes from the head before it has seen this batch (out of sample)
            before = cfg.head.credit_from == "previous"
            if before:
                with torch.no_grad():
                    head_out = core.adv_head(batch["features"], batch["actions"], batch["bin_probs"])
            fit_metrics, fit_nan = _fit_head(core, optimizer, batch, cfg, accelerator)
            metrics.update(fit_metrics)
            nan_seen |= fit_nan
            if not before:
                with torch.no_grad():
                    head_out = core.adv_head(batch["features"], batch["actions"], batch["bin_probs"])
        credit = credit_advantages(
            cfg.credit.mode, batch["advantages"], head_out, autoregressive=core.autoregressive,
            shared_source=cfg.credit.shared_source, surrogate=cfg.credit.surrogate,
            action_dims=cfg.env.action_dims, scale=cfg.credit.baseline_scale, mask=batch["valid"],
        )  # [B, D]
        if head_out is not None:
            metrics["credit/actor_variance_ratio"] = actor_variance_ratio(credit, batch["advantages"], batch["valid"])
        if cfg.ppo.norm_adv:
            credit = normalize_advantages(credit, batch["advantages"], mask=batch["valid"],
                                          all_reduce_sum=_all_reduce_sum(accelerator))
        batch["credit"] = credit

        # 5. PPO epochs x minibatches (x accumulation micro-batches)
        if not nan_seen:
            # critic warm-up: the first updates fit the value head only, so the policy's first steps
            # follow fitted advantages rather than a fresh value head's noise
            train_policy = update > cfg.ppo.critic_warmup_updates
            upd_metrics, upd_nan = _ppo_epochs(agent, optimizer, batch, cfg, accelerator, train_policy)
            metrics.update(upd_metrics)
            nan_seen |= upd_nan
        t_update = time.perf_counter()
        if cfg.ppo.lr_schedule == "adaptive" and not nan_seen and train_policy:
            # the KL is averaged across processes already, so every rank steers to the same rate
            counters["lr_scale"] = _adapt_lr_scale(counters.get("lr_scale", 1.0), metrics["losses/approx_kl"],
                                                   cfg.ppo.desired_kl)

        # 6. non-finite guard: skip, warn, abort after several in a row (last checkpoint stays good)
        counters["nan_streak"] = counters["nan_streak"] + 1 if nan_seen else 0
        if nan_seen:
            warnings.warn(f"update {update}: non-finite loss or gradient; update skipped "
                          f"({counters['nan_streak']}/{cfg.ppo.max_nan_updates} in a row)", stacklevel=1)
        counters["update"] = update

        # 7. log / plot / save
        metrics.update(_rollout_metrics(rollout, batch, head_out, accelerator))
        metrics.update({
            "charts/learning_rate": optimizer.param_groups[0]["lr"],
            "charts/update": float(update),
            "charts/global_step": float(counters["global_step"]),
            "charts/skipped_update": float(nan_seen),
            "charts/SPS": cfg.batch_size / max(t_update - t_start, 1e-9),
            "time/rollout_s": t_rollout - t_start,
            "time/update_s": t_update - t_rollout,
        })
        is_log_step = update % cfg.logging.log_every == 0 or update == cfg.num_updates
        is_plot_step = cfg.logging.plot_every > 0 and head_out is not None and (
            update % cfg.logging.plot_every == 0 or update == cfg.num_updates)
        is_save_step = not nan_seen and (
            (cfg.logging.checkpoint_every > 0 and update % cfg.logging.checkpoint_every == 0)
            or update == cfg.num_updates)
        if cfg.eval.every > 0 and (update % cfg.eval.every == 0 or update == cfg.num_updates):
            # main process only, on its own envs; every RNG stream is restored, so training is unchanged
            if accelerator.is_main_process:
                metrics.update(evaluate_during_training(core, cfg, update))
            accelerator.wait_for_everyone()
            is_log_step = True  # the evaluation's numbers are always logged
        if is_log_step:
            history.append(metrics)
            accelerator.log(metrics, step=counters["global_step"])
        if is_plot_step and accelerator.is_main_process:
            _plot(head_out, run_dir, update, counters["global_step"], accelerator, cfg)
        if is_save_step:
            _save_checkpoint(accelerator, core, optimizer, cfg, counters, state, envs)
        if counters["nan_streak"] >= cfg.ppo.max_nan_updates:
            last = resolve(run_dir) if list_checkpoints(run_dir) else None
            pbar.close()
            accelerator.end_training()
            where = (f"the last good checkpoint is {last} (resume={last} after the fix)" if last is not None
                     else "no checkpoint was saved before it")
            raise NonFiniteLossError(
                f"{counters['nan_streak']} updates in a row had a non-finite loss (update {update}); stopped: "
                f"{where}. Lower ppo.learning_rate or ppo.max_grad_norm, or check the rewards.")
        pbar.update(1)
        shown = {"SPS": f"{metrics['charts/SPS']:.0f}",
                 "ret": f"{metrics.get('rollout/ep_return_mean', float('nan')):.3f}"}
        for key, label in (("rollout/normalized_return", "norm"), ("rollout/success_rate", "success")):
            if key in metrics:  # the structured task has an optimum, simulators a success flag
                shown[label] = f"{metrics[key]:.2f}"
        pbar.set_postfix(shown)
    pbar.close()
    if accelerator.is_main_process and history.records and cfg.logging.plot_every > 0:
        plot_learning_curve(history.records, run_dir / layout.PLOTS / "learning_curve.png",
                            title=f"{cfg.name} ({cfg.credit.mode})")
    accelerator.end_training()
    return TrainResult(run_dir, core, history.records)


# -- update pieces ---------------------------------------------------------------------------------
def _flatten(rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, torch.Tensor]:
    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, *x.shape[2:])

    return {
        "obs": rollout.obs, "actions": flat(rollout.actions), "logp": flat(rollout.logp),
        "bin_probs": flat(rollout.bin_probs), "features": flat(rollout.features), "values": flat(rollout.values),
        "advantages": flat(advantages), "returns": flat(returns), "valid": flat(rollout.valid),
    }


def _minibatches(n: int, num_minibatches: int) -> list[torch.Tensor]:
    perm = torch.randperm(n)
    return list(perm.chunk(num_minibatches))


def _fit_head(core: Agent, optimizer, batch: dict, cfg: TrainConfig, accelerator: Accelerator):
    """Head-only regression on the batch's stored features (ALGORITHM.md §7), gradients averaged by hand."""
    head, p = core.adv_head, cfg.ppo
    params = [q for q in head.parameters() if q.requires_grad]
    inner = getattr(optimizer, "optimizer", optimizer)
    sums: dict[str, float] = {}
    steps, nan_seen = 0, False
    for _ in range(cfg.head.fit_epochs):
        for idx in _minibatches(len(batch["actions"]), p.num_minibatches):
            out = head(batch["features"][idx], batch["actions"][idx], batch["bin_probs"][idx])
            loss, m = head_loss(out, batch["advantages"][idx], lambda_pair=p.lambda_pair, lambda_1=p.lambda_1,
                                lambda_2=p.lambda_2, mask=batch["valid"][idx])
            if any_rank(accelerator, not bool(torch.isfinite(loss))):
                nan_seen = True
                break
            inner.zero_grad(set_to_none=True)
            loss.backward()
            if accelerator.num_processes > 1:
                for q in params:
                    if q.grad is not None:
                        q.grad = accelerator.reduce(q.grad, reduction="mean")
            torch.nn.utils.clip_grad_norm_(params, p.max_grad_norm)
            inner.step()
            steps += 1
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        if nan_seen:
            break
    inner.zero_grad(set_to_none=True)
    return {f"losses/head_fit_{k}": v / max(steps, 1) for k, v in sums.items()}, nan_seen


def _ppo_epochs(agent, optimizer, batch: dict, cfg: TrainConfig, accelerator: Accelerator,
                train_policy: bool = True):
    p = cfg.ppo
    sums: dict[str, float] = {}
    count = 0
    nan_seen = False
    first_ratio_dev = None
    epochs_done = 0
    policy_params = getattr(agent, "module", agent).trainable_parameters()
    for _epoch in range(p.num_epochs):
        epoch_kl, epoch_mb = 0.0, 0
        for mb in _minibatches(len(batch["actions"]), p.num_minibatches):
            bad = False
            mb_metrics: dict[str, float] = {}
            for micro in mb.chunk(p.gradient_accumulation_steps):
                with accelerator.accumulate(agent):
                    loss, m, ratio_dev = _loss(agent, batch, micro, cfg, check_ratio=first_ratio_dev is None,
                                               train_policy=train_policy)
                    if first_ratio_dev is None:
                        first_ratio_dev = ratio_dev
                    bad = bad or any_rank(accelerator, not bool(torch.isfinite(loss)))
                    if bad:
                        # keep DDP's bookkeeping whole: a zero gradient through every parameter
                        loss = sum((q * 0.0).sum() for q in agent.parameters())
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(agent.parameters(), p.max_grad_norm)
                        bad = bad or any_rank(accelerator, not bool(torch.isfinite(torch.as_tensor(grad_norm))))
                        m["grad_norm"] = float(grad_norm)
                        if not train_policy:
                            # critic warm-up: no gradient at all for the policy, so Adam neither steps nor
                            # counts steps for it; zero gradients would advance its bias correction and make
                            # the first policy steps after a long warm-up up to ~2.4x their usual size
                            for q in policy_params:
                                q.grad = None
                        if bad:
                            optimizer.zero_grad(set_to_none=True)
                        else:
                            optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                for k, v in m.items():
                    mb_metrics[k] = mb_metrics.get(k, 0.0) + float(v) / p.gradient_accumulation_steps
            if bad:
                nan_seen = True
                break
            for k, v in mb_metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            epoch_kl += mb_metrics["approx_kl"]
            epoch_mb += 1
        epochs_done += 1
        if nan_seen:
            break
        if p.target_kl is not None:
            kl = torch.tensor([epoch_kl / max(epoch_mb, 1)], device=accelerator.device)
            kl = _all_reduce_sum(accelerator)(kl) / accelerator.num_processes
            if float(kl) > p.target_kl:
                break
    out = {f"losses/{k}": v / max(count, 1) for k, v in sums.items()}
    out = {k: float(_all_reduce_sum(accelerator)(torch.tensor([v], device=accelerator.device)))
           / accelerator.num_processes for k, v in out.items()}
    out["losses/first_minibatch_logp_dev"] = float(first_ratio_dev or 0.0)
    out["losses/epochs_done"] = float(epochs_done)
    return out, nan_seen


def _loss(agent, batch: dict, idx: torch.Tensor, cfg: TrainConfig, check_ratio: bool = False,
          train_policy: bool = True):
    """Total loss ``L_pi + c_v L_V + c_a L_adv - c_H H`` on the samples ``idx`` (ALGORITHM.md §7).

    ``train_policy=False`` (critic warm-up): the policy's terms are multiplied by 0 and the value head
    reads detached features, so the policy gets exactly zero gradient while DDP still sees every parameter
    in the graph (``_ppo_epochs`` then drops those gradients, so Adam's state for the policy stays empty)."""
    p = cfg.ppo
    mask = batch["valid"][idx]
    out = agent(select_batch(batch["obs"], idx), batch["actions"][idx], batch["bin_probs"][idx],
                value_stop_gradient=None if train_policy else True)
    pg_loss, m = ppo_policy_loss(out.logp, batch["logp"][idx], batch["credit"][idx], p.clip_coef,
                                 ratio=cfg.credit.ratio, mask=mask)
    v_loss = value_loss(out.value, batch["returns"][idx], batch["values"][idx],
                        p.clip_coef if p.clip_vloss else None, mask=mask)
    w = mask.float() / mask.float().sum().clamp_min(1.0)
    entropy = (out.entropy.sum(-1) * w).sum()  # joint entropy (sum of per-dim / conditional entropies)
    policy_weight = 1.0 if train_policy else 0.0
    loss = policy_weight * (pg_loss - p.ent_coef * entropy) + p.vf_coef * v_loss
    metrics = {"policy_loss": pg_loss.detach(), "value_loss": v_loss.detach(), "entropy": entropy.detach(), **m}
    if p.kl_coef > 0:  # k3 estimate of KL(pi || pi_ref), pi_ref = the VLA with its adapter disabled
        core = getattr(agent, "module", agent)
        with torch.no_grad(), core.policy.reference():
            ref = core.policy.evaluate(select_batch(batch["obs"], idx), batch["actions"][idx])
        log_ratio = ref.logp.sum(-1) - out.logp.sum(-1)
        kl = ((log_ratio.exp() - log_ratio - 1.0) * w).sum()
        loss = loss + policy_weight * p.kl_coef * kl
        metrics["kl_ref"] = kl.detach()
    if out.head is not None:
        h_loss, hm = head_loss(out.head, batch["advantages"][idx], lambda_pair=p.lambda_pair,
                               lambda_1=p.lambda_1, lambda_2=p.lambda_2, mask=mask)
        loss = loss + p.adv_coef * h_loss
        metrics["head_loss"] = h_loss.detach()
    dev = None
    if check_ratio:  # only the first micro-batch of an update: rollout vs recomputed log-probs
        with torch.no_grad():
            dev = float(((out.logp - batch["logp"][idx]).abs().sum(-1) * mask).max())
    return loss, metrics, dev


# -- metrics, plots --------------------------------------------------------------------------------
def _rollout_metrics(rollout: Rollout, batch: dict, head_out, accelerator: Accelerator) -> dict[str, float]:
    eps = rollout.episodes
    sums = torch.tensor([sum(eps.returns), len(eps.returns), sum(eps.optimal), sum(eps.lengths),
                         sum(eps.success), len(eps.success)], dtype=torch.float64, device=accelerator.device)
    sums = _all_reduce_sum(accelerator)(sums)
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
    out["losses/explained_variance"] = explained_variance(batch["values"][valid], batch["returns"][valid])
    out["rollout/reward_mean"] = float(rollout.rewards[rollout.valid].mean())
    if head_out is not None:
        out["credit/explained_variance_head"] = explained_variance(head_out.total[valid], batch["advantages"][valid])
        scalars, _, _ = credit_summary(_select(head_out, valid))
        out.update(scalars)
        out.update(variance_shares(_select(head_out, valid), batch["advantages"][valid]))
    return out


def _select(head_out, mask):
    from ..algo.heads import HeadOutput

    return HeadOutput(head_out.shared[mask], head_out.per_dim[mask], head_out.pair[mask], head_out.total[mask])


def _plot(head_out, run_dir: Path, update: int, step: int, accelerator: Accelerator, cfg: TrainConfig) -> None:
    _, table, heat = credit_summary(head_out)
    image = plot_credit(table, heat, run_dir / layout.PLOTS / f"credit_{update:06d}.png",
                        title=f"{cfg.name}: update {update} ({cfg.credit.mode})")
    log_image(accelerator, cfg, "credit/plot", image, step)


def _progress(cfg: TrainConfig, accelerator: Accelerator, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=cfg.num_updates, initial=initial, desc=f"train {cfg.name}", unit="upd",
                disable=not (accelerator.is_main_process and cfg.logging.progress_bar), dynamic_ncols=True)


# -- checkpoints ------------------------------------------------------------------------------------
def _save_checkpoint(accelerator: Accelerator, core: Agent, optimizer, cfg: TrainConfig, counters: dict,
                     state: RolloutState, envs) -> None:
    tmp, final = staging_dirs(cfg.run_dir, counters["update"])
    if accelerator.is_main_process:
        start_dir(tmp)
    accelerator.wait_for_everyone()
    env_state = envs.get_state()
    if hasattr(envs, "normalization_state"):  # saved beside the weights: eval and init_from need it
        core.env_normalization = envs.normalization_state()
    rank_state = {
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "env": to_torch_tree(env_state) if env_state is not None else None,
        "rollout": to_torch_tree(state.state_dict()),
    }
    torch.save(rank_state, tmp / layout.rank_state(accelerator.process_index))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_agent(core, tmp, cfg)
        torch.save({"optimizer": optimizer.state_dict(), "counters": dict(counters),
                    "world_size": accelerator.num_processes}, tmp / layout.TRAINER_STATE)
        write_atomic_dir(tmp, final)
        prune(cfg.run_dir, cfg.logging.keep_checkpoints)
    accelerator.wait_for_everyone()


def _load_trainer_state(where: Path, accelerator: Accelerator, core: Agent, optimizer, envs,
                        state: RolloutState) -> dict:
    """Resume: the optimizer, counters, RNG streams, env and rollout state of checkpoint ``where`` (its
    policy and heads were loaded when the agent was built from it)."""
    needed = [layout.TRAINER_STATE, layout.rank_state(accelerator.process_index),
              *(layout.HEAD_FILES[attr] for attr in core.heads())]
    missing = [f for f in needed if not (where / f).is_file()]
    if missing:
        raise CheckpointError(
            f"checkpoint {where} cannot be resumed: missing {missing}. It was written by a run with another "
            "number of processes or head setting, by SFT (start from it with init_from=), or it is damaged; "
            "resume from another checkpoint.")
    trainer_state = torch_load(where / layout.TRAINER_STATE)
    optimizer.load_state_dict(trainer_state["optimizer"])
    rank_state = torch_load(where / layout.rank_state(accelerator.process_index))
    torch.set_rng_state(rank_state["torch_rng"])
    random.setstate(_as_tuple(rank_state["python_rng"]))
    if rank_state["env"] is not None:
        envs.set_state(rank_state["env"])
    else:
        warnings.warn("this env cannot save its state: resumed envs start fresh episodes", stacklevel=1)
    restored = RolloutState.from_state_dict(rank_state["rollout"])
    state.obs, state.resetting = restored.obs, np.asarray(restored.resetting).astype(bool)
    return dict(trainer_state["counters"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
