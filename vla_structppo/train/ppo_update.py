"""The PPO update: epochs x minibatches x accumulation micro-batches over one batch, and the loss of a micro-batch.

LeRobot's Accelerate pattern (STYLE.md rule 8): ``accelerator.accumulate``, ``accelerator.backward``, clip and
step only when ``sync_gradients``. A non-finite loss or gradient on any process skips the minibatch's step on
every process (the caller counts such updates and aborts after ``ppo.max_nan_updates`` in a row).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from accelerate import Accelerator

from ..algo import head_loss, ppo_policy_loss, value_loss
from ..config import TrainConfig
from .accel import all_reduce_sum, any_rank
from .advantages import batch_obs, minibatches

__all__ = ["ppo_epochs", "ppo_loss"]


@dataclass
class _Tally:
    """Running sums of the minibatches' metrics over an update, kept per metric: with GRPO a process may hold
    fewer (or no) samples than another, and its empty minibatches add nothing. Every process knows every metric's
    name (it computes the loss of each micro-batch, counted or not), so the processes' tables line up."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    first_logp_dev: float | None = None  # rollout vs recomputed log-probs at the update's first micro-batch

    def add(self, metrics: dict[str, float], names: set[str]) -> None:
        """The minibatch's ``metrics``; ``names``: every metric the minibatch computed (counted or not)."""
        for k in names:
            self.sums.setdefault(k, 0.0)
            self.counts.setdefault(k, 0)
        for k, v in metrics.items():
            self.sums[k] += v
            self.counts[k] += 1

    def means(self, accelerator: Accelerator) -> dict[str, float]:
        """Every metric's mean over this process's minibatches, averaged over the processes that have it (one
        all-reduce); a metric no process counted is left out."""
        names = sorted(self.sums)
        if not names:
            return {}
        t = torch.tensor([[self.sums[k] / self.counts[k], 1.0] if self.counts[k] else [0.0, 0.0] for k in names],
                         device=accelerator.device)
        t = all_reduce_sum(accelerator)(t)
        return {k: float(t[i, 0]) / float(t[i, 1]) for i, k in enumerate(names) if float(t[i, 1]) > 0}


def ppo_epochs(agent, optimizer, batch: dict, cfg: TrainConfig, accelerator: Accelerator,
               train_policy: bool = True) -> tuple[dict[str, float], bool]:
    """``ppo.num_epochs`` passes over ``batch`` (early stop at ``ppo.target_kl``); returns the mean metrics (averaged
    over processes) and whether a non-finite loss or gradient was seen (the update is then cut short)."""
    p = cfg.ppo
    tally = _Tally()
    policy_params = getattr(agent, "module", agent).trainable_parameters()
    valid = batch["valid"].cpu()  # which rows count, read on the host once (not once per micro-batch)
    epochs_done, nan_seen = 0, False
    for _epoch in range(p.num_epochs):
        epoch_kl, epoch_mb = 0.0, 0
        for mb in minibatches(len(batch["actions"]), p.num_minibatches):
            mb_metrics, names, bad = _minibatch_step(agent, optimizer, batch, mb, valid, cfg, accelerator,
                                                     train_policy, policy_params, tally)
            if bad:
                nan_seen = True
                break
            tally.add(mb_metrics, names)
            if "approx_kl" in mb_metrics:  # absent for a minibatch empty on this process
                epoch_kl += mb_metrics["approx_kl"]
                epoch_mb += 1
        epochs_done += 1
        if nan_seen:
            break
        if p.target_kl is not None:
            # the mean over the processes that stepped on data this epoch
            kl = torch.tensor([epoch_kl / max(epoch_mb, 1), float(epoch_mb > 0)], device=accelerator.device)
            kl = all_reduce_sum(accelerator)(kl)
            if float(kl[0]) / max(float(kl[1]), 1.0) > p.target_kl:
                break
    out = {f"losses/{k}": v for k, v in tally.means(accelerator).items()}
    out["losses/first_minibatch_logp_dev"] = float(tally.first_logp_dev or 0.0)
    out["losses/epochs_done"] = float(epochs_done)
    return out, nan_seen


def _minibatch_step(agent, optimizer, batch: dict, mb: torch.Tensor, valid: torch.Tensor, cfg: TrainConfig,
                    accelerator: Accelerator, train_policy: bool, policy_params: list, tally: _Tally
                    ) -> tuple[dict[str, float], set[str], bool]:
    """One optimizer step over minibatch ``mb`` in ``gradient_accumulation_steps`` micro-batches; returns the
    metrics of its counted micro-batches, the names of every metric computed, and whether anything was non-finite.
    ``valid``: ``batch["valid"]`` on the host."""
    p = cfg.ppo
    bad = False
    mb_metrics: dict[str, float] = {}
    names: set[str] = {"grad_norm"}
    # as many micro-batches on every process (tensor_split, unlike chunk, never returns fewer parts), and a forward
    # and backward through DDP for each, even for a part with nothing to learn from (GRPO's batches differ in size
    # between processes): it runs on the batch's first row with its loss x 0 and its metrics left out
    micros = torch.tensor_split(mb, p.gradient_accumulation_steps)
    counted = [len(micro) > 0 and bool(valid[micro].any()) for micro in micros]
    grad_norm = None
    for micro, count in zip(micros, counted, strict=True):
        with accelerator.accumulate(agent):
            check = count and tally.first_logp_dev is None
            loss, m, dev = ppo_loss(agent, batch, micro if len(micro) else mb.new_zeros(1), cfg, check_ratio=check,
                                    train_policy=train_policy)
            if check:
                tally.first_logp_dev = dev
            names.update(m)
            if not count:
                loss, m = loss * 0.0, {}
            bad = bad or any_rank(accelerator, not bool(torch.isfinite(loss)))
            if bad:
                loss = _zero_loss(agent)  # keep DDP's bookkeeping whole: a zero gradient through every parameter
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                grad_norm, bad = _optimizer_step(agent, optimizer, accelerator, p.max_grad_norm, bad,
                                                 None if train_policy else policy_params)
        if m:  # one host sync for all the micro-batch's metrics
            values = torch.stack([v.detach().to(torch.float64) for v in m.values()]).tolist()
            for k, v in zip(m, values, strict=True):
                mb_metrics[k] = mb_metrics.get(k, 0.0) + v / sum(counted)
    if grad_norm is not None and any(counted):
        mb_metrics["grad_norm"] = grad_norm  # one per optimizer step, not averaged over the micro-batches
    return mb_metrics, names, bad


def _zero_loss(agent) -> torch.Tensor:
    """A loss of zero that reaches every parameter (a backward DDP can sync like any other)."""
    return sum((q * 0.0).sum() for q in agent.parameters())


def _optimizer_step(agent, optimizer, accelerator: Accelerator, max_grad_norm: float, bad: bool,
                    frozen: list | None) -> tuple[float, bool]:
    """Clip, then step unless anything was non-finite; ``frozen`` parameters get no step at all.

    Critic warm-up passes the policy's parameters as ``frozen``: no gradient, so Adam neither steps nor counts
    steps for them; zero gradients would advance its bias correction and make the first policy steps after a
    long warm-up up to ~2.4x their usual size."""
    grad_norm = accelerator.clip_grad_norm_(agent.parameters(), max_grad_norm)
    bad = bad or any_rank(accelerator, not bool(torch.isfinite(torch.as_tensor(grad_norm))))
    for q in frozen or ():
        q.grad = None
    if bad:
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm), bad


def ppo_loss(agent, batch: dict, idx: torch.Tensor, cfg: TrainConfig, check_ratio: bool = False,
             train_policy: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor], float | None]:
    """Total loss ``L_pi + c_v L_V + c_a L_adv - c_H H (+ beta KL)`` on the samples ``idx`` (ALGORITHM.md §7).

    ``train_policy=False`` (critic warm-up): the policy's terms are multiplied by 0 and the value head
    reads detached features, so the policy gets exactly zero gradient while DDP still sees every parameter
    in the graph (:func:`ppo_epochs` then drops those gradients, so Adam's state for the policy stays empty).
    ``check_ratio``: also return the largest |recomputed - rollout| joint log-prob (the ratio-1 check)."""
    p = cfg.ppo
    mask = batch["valid"][idx]
    tokens = batch["token_mask"][idx] if "token_mask" in batch else None  # chunk steps executed [B, D]
    core = getattr(agent, "module", agent)
    out = agent(batch_obs(batch, idx), batch["actions"][idx], batch["bin_probs"][idx],
                value_stop_gradient=None if train_policy else True)
    pg_loss, m = ppo_policy_loss(out.logp, batch["logp"][idx], batch["credit"][idx], p.clip_coef,
                                 ratio=cfg.credit.ratio, mask=mask, clip_coef_high=p.clip_range_high,
                                 dual_clip=p.dual_clip, aggregation=p.loss_aggregation, token_mask=tokens,
                                 step_dims=core.policy.action_dims // cfg.action.chunk_size)
    if core.value_head is not None:
        v_loss = value_loss(out.value, batch["returns"][idx], batch["values"][idx],
                            p.clip_coef if p.clip_vloss else None, mask=mask)
    else:  # GRPO: no critic
        v_loss = out.logp.new_zeros(())
    w = mask.float() / mask.float().sum().clamp_min(1.0)
    entropies = out.entropy if tokens is None else out.entropy * tokens
    entropy = (entropies.sum(-1) * w).sum()  # joint entropy (sum of per-dim / conditional entropies)
    policy_weight = 1.0 if train_policy else 0.0
    loss = policy_weight * (pg_loss - p.ent_coef * entropy) + p.vf_coef * v_loss
    metrics = {"policy_loss": pg_loss.detach(), "entropy": entropy.detach(), **m}
    if core.value_head is not None:  # GRPO has no critic: no value loss to report
        metrics["value_loss"] = v_loss.detach()
    if p.kl_coef > 0:  # k3 estimate of KL(pi || pi_ref), pi_ref = the VLA with its adapter disabled
        with torch.no_grad(), core.policy.reference():
            ref = core.policy.evaluate(batch_obs(batch, idx), batch["actions"][idx])
        token_log_ratio = ref.logp - out.logp
        if tokens is not None:  # chunk tokens that were never executed are not pulled toward the reference either
            token_log_ratio = token_log_ratio * tokens
        log_ratio = token_log_ratio.sum(-1)
        kl = ((log_ratio.exp() - log_ratio - 1.0) * w).sum()
        loss = loss + policy_weight * p.kl_coef * kl
        metrics["kl_ref"] = kl.detach()
    if out.head is not None:
        h_loss, _ = head_loss(out.head, batch["advantages"][idx], lambda_pair=p.lambda_pair,
                              lambda_1=p.lambda_1, lambda_2=p.lambda_2, mask=mask)
        loss = loss + p.adv_coef * h_loss
        metrics["head_loss"] = h_loss.detach()
    dev = None
    if check_ratio:  # only the first micro-batch of an update: rollout vs recomputed log-probs
        with torch.no_grad():
            dev = float(((out.logp - batch["logp"][idx]).abs().sum(-1) * mask).max())
    return loss, metrics, dev
