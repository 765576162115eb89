"""How PPO learns: ``ppo`` (the update), ``head`` (the structured advantage head), ``credit`` (per-dim advantages),
``action`` (what one decision is: chunks, decoding), ``advantage`` (GAE or GRPO) and ``rollout`` (which experience
an update keeps)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional  # noqa: UP035 - OmegaConf reads typing generics

from .choices import (
    AGGREGATIONS,
    BASELINE_SCALES,
    CENTERINGS,
    CREDIT_MODES,
    DECODINGS,
    ESTIMATORS,
    HEAD_MODES,
    LR_SCHEDULES,
    RATIOS,
    SHARED_SOURCES,
    SURROGATES,
    at_least,
)
from .choices import not_one_of as _not_one_of

__all__ = ["ActionConfig", "AdvantageConfig", "CreditConfig", "HeadConfig", "PPOConfig", "RolloutConfig"]


@dataclass
class HeadConfig:
    enabled: bool = True
    """Build the structured advantage head (needed by shared_local / structured / counterfactual)."""
    hidden_size: int = 64
    """Width of the head's state trunk."""
    bin_embed_dim: int = 32
    """Width of the bin embedding the per-dim and pairwise terms read."""
    rank: int = 8
    """Rank r of the pairwise bilinear factors."""
    pairwise: bool = True
    """Second-order (pairwise) terms; false = first order only (the note's idea 1)."""
    centering: str = "policy"
    """De-meaning of the terms over each dim's bins: ``policy`` (default), ``uniform`` (BDQ) or ``none``."""
    stop_gradient: bool = True
    """Detach the state feature so the head never trains the policy trunk."""
    fit_epochs: int = 2
    """Head-only regression epochs on each fresh batch."""
    credit_from: str = "previous"
    """Which head gives the credit: ``previous`` (default: the head as it was before seeing this batch, fitted
    afterwards -- its baseline cannot contain the batch's own actions, so counterfactual credit stays unbiased in a
    finite batch) or ``fitted`` (after its regression on this batch, in-sample: it absorbs part of each dim's own
    effect and overfits noise; what earlier versions did -- the late plateau in docs/benchmarks.md)."""

    def problems(self, cfg: Any) -> list[str]:  # cfg: the run.TrainConfig
        out = [_not_one_of(key, value, options) for key, value, options in (
            ("head.centering", self.centering, CENTERINGS),
            ("head.credit_from", self.credit_from, ("fitted", "previous"))) if value not in options]
        return out + at_least([("head.rank", self.rank, 1), ("head.hidden_size", self.hidden_size, 1),
                               ("head.bin_embed_dim", self.bin_embed_dim, 1), ("head.fit_epochs", self.fit_epochs, 0)])


@dataclass
class CreditConfig:
    mode: str = "counterfactual"
    """Per-dim advantages for the actor: ``joint``, ``shared_local``, ``structured``, ``counterfactual``."""
    shared_source: str = "gae"
    """shared_local only: ``A_shared`` from ``gae`` (default) or from the head's state term (``head``)."""
    surrogate: str = "per_dim"
    """shared_local only: ``per_dim`` (each dim its own A_eff) or ``mean`` (the note's scalar form)."""
    ratio: str = "joint"
    """``joint`` importance ratio with per-dim gradient routing (the design), ``token`` (per-token ratio and
    clip, a baseline) or ``token_clip`` (joint importance weight, each dim clipped on its own ratio)."""
    baseline_scale: str = "one"
    """counterfactual only: subtract the head's baseline as it is (``one``) or scaled per dim by its fitted
    control-variate coefficient over the batch, clipped to [0, 1] (``fitted``: never adds variance)."""

    def problems(self, cfg: Any) -> list[str]:  # cfg: the run.TrainConfig
        out = [_not_one_of(key, value, options) for key, value, options in (
            ("credit.mode", self.mode, CREDIT_MODES), ("credit.ratio", self.ratio, RATIOS),
            ("credit.shared_source", self.shared_source, SHARED_SOURCES),
            ("credit.surrogate", self.surrogate, SURROGATES),
            ("credit.baseline_scale", self.baseline_scale, BASELINE_SCALES)) if value not in options]
        if self.mode in HEAD_MODES and not cfg.head.enabled:
            out.append(f"credit.mode={self.mode!r} reads the structured advantage head but head.enabled=false; "
                       "set head.enabled=true or credit.mode=joint")
        return out


@dataclass
class PPOConfig:
    total_timesteps: int = 40_000
    """Env steps to train for, over all processes."""
    num_steps: int = 8
    """Rollout length per env per update (batch = num_envs x num_steps)."""
    num_epochs: int = 4
    """PPO epochs over each batch."""
    num_minibatches: int = 4
    """Minibatches per epoch (each an optimizer step)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per minibatch, accumulated before the optimizer step."""
    learning_rate: float = 3.0e-3
    """Adam learning rate of the policy and value head."""
    head_learning_rate: float = 3.0e-3
    """Adam learning rate of the structured advantage head."""
    value_learning_rate: Optional[float] = None  # noqa: UP045
    """Adam learning rate of the value head; null = ``learning_rate`` (VLA-RL systems use ~3e-3 against
    1e-4 for the LoRA adapter)."""
    lr_schedule: str = "linear"
    """``constant``, ``linear`` (to 0) or ``cosine`` (to 0) over the run's updates; ``adaptive`` steers the
    policy's learning rate so that each update moves the policy by about ``ppo.desired_kl`` (x1.5 when the update's
    KL is under half of it, /1.5 when over twice; within [lr/100, lr*10]), the value and head rates stay constant.
    A step size fixed in policy space rather than parameter space (rsl_rl's schedule); it does not anneal, so a
    converged policy's rate climbs to the cap (docs/algorithm.md, "The update, step by step")."""
    desired_kl: float = 0.01
    """``lr_schedule: adaptive`` only: the KL(old||new) per update to steer to (the mean approx KL of the update's
    minibatches)."""
    gamma: float = 0.99
    """Discount."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_coef: float = 0.2
    """PPO clip epsilon."""
    clip_vloss: bool = True
    """Clip the value loss around the rollout's values (PPO2)."""
    norm_adv: bool = True
    """Normalise advantages per batch (across ranks), the same affine map for every credit mode."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient c_H."""
    vf_coef: float = 0.5
    """Value loss coefficient c_v."""
    adv_coef: float = 1.0
    """Structured head loss coefficient c_a."""
    lambda_pair: float = 1.0e-3
    """L2 penalty on the pairwise terms."""
    lambda_1: float = 0.0
    """The note's zero-sum penalty on the per-dim terms (matters with centering: none)."""
    lambda_2: float = 0.0
    """L2 penalty on the per-dim terms."""
    max_grad_norm: float = 0.5
    """Gradient clipping norm."""
    target_kl: Optional[float] = None  # noqa: UP045
    """Stop the epochs of an update once approx KL exceeds this; null = never."""
    max_nan_updates: int = 3
    """Abort after this many updates in a row with a non-finite loss (each is skipped)."""
    kl_coef: float = 0.0
    """KL penalty to the reference policy (the VLA with its adapter disabled); 0 = off."""
    critic_warmup_updates: int = 0
    """The run's first this many updates train the value (and structured) head only, the policy not at all
    (no gradient, no optimizer step or Adam state; the value head reads detached features): a fresh value
    head's noise would otherwise be the first policy steps' advantage (RL4VLA and RLinf warm their critics
    up the same way)."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this before GAE (logged episode returns stay in the env's units); e.g.
    0.1 for MetaWorld's dense reward of 0-10 per step."""
    clip_range_high: Optional[float] = None  # noqa: UP045
    """Upper clip: the ratio is clipped to ``[1 - clip_coef, 1 + clip_range_high]`` (clip-higher: 0.28 in
    SimpleVLA-RL / RLinf with clip_coef 0.2); null = ``clip_coef``."""
    dual_clip: Optional[float] = None  # noqa: UP045
    """Dual clip ``c > 1`` (Ye et al. 2020; 3.0 in RLinf): a negative advantage's term is bounded below by ``c A``, so a
    large ratio on a bad action cannot dominate; null = off."""
    loss_aggregation: str = "sample_mean"
    """``sample_mean``: a decision's token terms summed, averaged over decisions (the design); ``token_mean``: every
    counted token weighted alike (SimpleVLA-RL, RLinf: ``sample_mean / D`` when all D tokens count)."""

    def problems(self, cfg: Any) -> list[str]:  # cfg: the run.TrainConfig
        out = [_not_one_of(key, value, options) for key, value, options in (
            ("ppo.lr_schedule", self.lr_schedule, LR_SCHEDULES),
            ("ppo.loss_aggregation", self.loss_aggregation, AGGREGATIONS)) if value not in options]
        out += at_least([("ppo.num_steps", self.num_steps, 1), ("ppo.num_epochs", self.num_epochs, 1),
                         ("ppo.num_minibatches", self.num_minibatches, 1), ("ppo.total_timesteps", self.total_timesteps, 1),
                         ("ppo.gradient_accumulation_steps", self.gradient_accumulation_steps, 1),
                         ("ppo.max_nan_updates", self.max_nan_updates, 1),
                         ("ppo.critic_warmup_updates", self.critic_warmup_updates, 0)])
        if self.clip_range_high is not None and not self.clip_range_high > 0:
            out.append(f"ppo.clip_range_high must be > 0 (or null: clip_coef), got {self.clip_range_high}")
        if self.dual_clip is not None and not self.dual_clip > 1:
            out.append(f"ppo.dual_clip must be > 1 (or null: off), got {self.dual_clip}")
        if self.desired_kl <= 0:
            out.append(f"ppo.desired_kl must be > 0, got {self.desired_kl}")
        if self.kl_coef < 0:
            out.append(f"ppo.kl_coef must be >= 0, got {self.kl_coef}")
        if self.kl_coef > 0 and cfg.policy.type != "vla":
            out.append("ppo.kl_coef > 0 needs policy.type=vla (the reference is the VLA without its adapter)")
        value_lr = self.value_learning_rate if self.value_learning_rate is not None else 1.0
        for key, value in [("ppo.learning_rate", self.learning_rate), ("ppo.head_learning_rate", self.head_learning_rate),
                           ("ppo.clip_coef", self.clip_coef), ("ppo.max_grad_norm", self.max_grad_norm),
                           ("ppo.reward_scale", self.reward_scale), ("ppo.value_learning_rate", value_lr)]:
            if value <= 0:
                out.append(f"{key} must be > 0, got {value}")
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.gae_lambda <= 1.0):
            out.append("ppo.gamma and ppo.gae_lambda must lie in [0, 1]")
        micro = self.num_minibatches * self.gradient_accumulation_steps
        if micro > 0 and cfg.batch_size % micro and cfg.advantage.estimator == "gae":  # GRPO: batches vary
            out.append(f"batch num_envs*num_steps={cfg.batch_size} is not divisible by "
                       f"num_minibatches*gradient_accumulation_steps={micro}")
        return out


@dataclass
class ActionConfig:
    """``action``: what one decision of the policy is (docs/vla.md, "Action chunks")."""

    chunk_size: int = 1
    """H: env steps per decision. The policy emits H x ``env.action_dims`` action tokens at once, the env executes
    them open loop (an episode ending inside the chunk drops the rest) and GAE runs over decisions (OpenVLA-OFT: 8
    on LIBERO, 25 on ALOHA). VLA policies only."""
    decoding: str = "autoregressive"
    """``autoregressive`` (each action token sees the earlier ones; KV-cached decoding) or ``parallel``
    (OpenVLA-OFT: every token from one bidirectional forward over zeroed slots, independent given the
    observation; the architectures with a Llama text model: openvla, llava, idefics3)."""

    def problems(self, cfg: Any) -> list[str]:  # cfg: the run.TrainConfig
        out = []
        if self.chunk_size < 1:
            out.append(f"action.chunk_size must be >= 1, got {self.chunk_size}")
        if self.decoding not in DECODINGS:
            out.append(_not_one_of("action.decoding", self.decoding, DECODINGS))
        if cfg.policy.type != "vla" and (self.chunk_size > 1 or self.decoding != "autoregressive"):
            out.append(f"action.chunk_size / action.decoding are for VLA policies (policy.type=vla); "
                       f"policy.type={cfg.policy.type!r} acts one step at a time")
        if self.chunk_size > 1 and cfg.env.id == "structured" and cfg.env.structured.autoreset_mode != "same_step":
            out.append("action.chunk_size > 1 needs env.structured.autoreset_mode=same_step (a chunk stops where its "
                       "episode ends)")
        if self.chunk_size > 1 and cfg.env.id == "gym" and cfg.env.gym.normalize_reward:
            out.append("action.chunk_size > 1 with env.id=gym needs env.gym.normalize_reward=false (the chunk's "
                       "per-step rewards are discounted by the trainer, in the env's units)")
        return out


@dataclass
class AdvantageConfig:
    """``advantage``: where the advantage the credit modes split comes from (docs/algorithm.md, "GRPO")."""

    estimator: str = "gae"
    """``gae``: a critic and GAE (``ppo.gamma``, ``ppo.gae_lambda``). ``grpo``: no critic; the envs run in groups of
    ``group_size`` started from the same initial state, one whole episode each, and every decision of an episode
    gets ``(R - mean_group) / (std_group + 1e-6)``, R = its return x ``ppo.reward_scale`` (SimpleVLA-RL, RLinf)."""
    group_size: int = 8
    """GRPO: episodes per group (envs started alike); must divide the envs of every process."""

    def problems(self, cfg: Any) -> list[str]:  # cfg: the run.TrainConfig
        out = []
        if self.estimator not in ESTIMATORS:
            out.append(_not_one_of("advantage.estimator", self.estimator, ESTIMATORS))
        if self.group_size < 1:
            out.append(f"advantage.group_size must be >= 1, got {self.group_size}")
        elif self.estimator == "grpo" and cfg.env.num_envs % self.group_size:
            out.append(f"advantage.group_size={self.group_size} must divide env.num_envs={cfg.env.num_envs} (every "
                       "group is a block of envs started alike)")
        if self.estimator == "grpo" and cfg.ppo.critic_warmup_updates > 0:
            out.append("ppo.critic_warmup_updates > 0 warms up a critic, and advantage.estimator=grpo has none: set "
                       "it to 0")
        return out


@dataclass
class RolloutConfig:
    """``rollout``: which collected experience an update learns from."""

    filter_groups: Optional[List[float]] = None  # noqa: UP006, UP045
    """GRPO's dynamic sampling: keep only the groups whose success rate lies in ``[low, high]`` (SimpleVLA-RL:
    [0.1, 0.9]; all-fail and all-succeed groups carry no signal); null = keep every group."""

    def problems(self, cfg: Any) -> list[str]:  # cfg: the run.TrainConfig
        if self.filter_groups is None:
            return []
        band = list(self.filter_groups)
        out = []
        if len(band) != 2 or not 0.0 <= band[0] <= band[1] <= 1.0:
            out.append(f"rollout.filter_groups must be [low, high] with 0 <= low <= high <= 1, got {band}")
        if cfg.advantage.estimator != "grpo":
            out.append("rollout.filter_groups filters GRPO's groups: it needs advantage.estimator=grpo")
        return out
