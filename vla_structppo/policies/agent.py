"""The trainable bundle: policy + value head + structured advantage head, as ONE module.

Everything the update needs comes out of one ``forward`` so DDP (Accelerate) sees a single forward
per backward and synchronises every parameter's gradient. Building the policy of a config is
:func:`build_policy`; saving and loading an agent is the checkpoint layer's (vla_structppo/checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..algo.heads import HeadOutput, StructuredAdvantageHead, ValueHead
from ..config import TrainConfig
from .mlp import AutoregressiveMLPPolicy, MLPPolicy, ObservationCritic, orthogonal_init

__all__ = ["Agent", "AgentOutput", "STATE_POLICIES", "build_state_policy"]

# the policies on state vectors, by ``policy.type`` (a VLA is built from its checkpoint by vla_loading)
STATE_POLICIES: dict[str, type[nn.Module]] = {"mlp": MLPPolicy, "ar_mlp": AutoregressiveMLPPolicy}


def build_state_policy(cfg: TrainConfig, obs_dim: int) -> nn.Module:
    """The configured MLP policy for observations of width ``obs_dim``."""
    cls = STATE_POLICIES[cfg.policy.type]
    policy = cls(obs_dim, cfg.env.action_dims, cfg.env.num_bins, cfg.policy.hidden_size, cfg.policy.num_layers)
    if cfg.policy.orthogonal_init:
        orthogonal_init(policy)
    return policy


@dataclass
class AgentOutput:
    logp: torch.Tensor  # [B, D]
    entropy: torch.Tensor  # [B, D]
    bin_probs: torch.Tensor  # [B, D, K]
    features: torch.Tensor  # [B, H]
    value: torch.Tensor  # [B]
    head: HeadOutput | None


class Agent(nn.Module):
    """``value_head`` is None when nothing needs a critic (``advantage.estimator: grpo``): ``value`` is then 0."""

    def __init__(self, policy: nn.Module, value_head: ValueHead | ObservationCritic | None,
                 adv_head: StructuredAdvantageHead | None, value_stop_gradient: bool = False):
        super().__init__()
        self.policy = policy
        self.value_head = value_head
        self.adv_head = adv_head
        self.value_stop_gradient = value_stop_gradient
        # a separate critic reads the (prepared) observation, the shared value head the policy's feature
        self.value_reads_obs = isinstance(value_head, ObservationCritic)
        # observation-normalisation statistics of the env it was trained on (envs/normalize.py), or None;
        # loaded from / saved to checkpoints beside the weights, applied frozen by eval
        self.env_normalization: dict[str, Any] | None = None

    @classmethod
    def from_config(cls, cfg: TrainConfig, policy: nn.Module) -> Agent:
        """``policy`` with a fresh value head (unless the advantage estimator needs no critic) and, when
        ``head.enabled``, a structured advantage head over the policy's action tokens (``H x A`` with chunks)."""
        value: ValueHead | ObservationCritic | None
        if not cfg.needs_critic:
            value = None
        elif cfg.policy.value_network == "separate":
            value: ValueHead | ObservationCritic = ObservationCritic(
                policy.obs_dim, cfg.policy.value_hidden_size, cfg.policy.num_layers, cfg.policy.orthogonal_init)
        else:
            value = ValueHead(policy.feature_dim, cfg.policy.value_hidden_size)
        head = None
        if cfg.head.enabled:
            h = cfg.head
            # a VLA's bins are vocabulary tokens: the head reads their (frozen) input embeddings
            bins = policy.bin_embeddings() if hasattr(policy, "bin_embeddings") else None
            head = StructuredAdvantageHead(
                policy.feature_dim, policy.action_dims, cfg.env.num_bins, hidden_size=h.hidden_size,
                bin_embed_dim=h.bin_embed_dim, rank=h.rank, pairwise=h.pairwise, centering=h.centering,
                stop_gradient=h.stop_gradient, bin_embeddings=bins,
            )
        return cls(policy, value, head, value_stop_gradient=cfg.policy.value_stop_gradient)

    @property
    def action_coding(self) -> Any:
        """How the policy's bins become continuous actions (a VLA's action tokenizer), or None (the MLPs act in the
        env's own bins)."""
        tokenizer = getattr(self.policy, "action_tokenizer", None)
        return tokenizer.coding if tokenizer is not None else None

    def configure_env(self, envs: Any, *, evaluation: bool) -> None:
        """Make ``envs`` execute what this agent means: a VLA's bins decoded with its own coding, observations
        normalised with the statistics it was trained under (frozen for ``evaluation``; training from a
        checkpoint continues them)."""
        if self.action_coding is not None:
            envs.set_coding(self.action_coding)
        if self.env_normalization is not None:
            if not hasattr(envs, "load_normalization"):
                raise ValueError("this policy was trained on normalised observations, but the env normalises "
                                 "nothing: evaluate it on the env it was trained on (env.id=gym)")
            envs.load_normalization(self.env_normalization, frozen=evaluation)

    @property
    def is_vla(self) -> bool:
        """A vision-language policy (its weights are an adapter or a transformers model, not one file)."""
        return getattr(self.policy, "action_tokenizer", None) is not None

    def heads(self) -> dict[str, nn.Module]:
        """The heads that exist, by attribute name (``value_head``, ``adv_head``)."""
        return {name: m for name, m in (("value_head", self.value_head), ("adv_head", self.adv_head)) if m is not None}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Policy parameters that train (a VLA: the adapter); the heads have their own groups."""
        return [p for p in self.policy.parameters() if p.requires_grad]

    @property
    def autoregressive(self) -> bool:
        return bool(self.policy.autoregressive)

    def value(self, inputs: Any, features: torch.Tensor) -> torch.Tensor:
        """``V(s) [B]`` for prepared policy ``inputs`` whose state feature is ``features`` (0 without a critic)."""
        if self.value_head is None:
            return features.new_zeros(features.shape[0])
        return self.value_head(inputs if self.value_reads_obs else features)

    def forward(self, obs: Any, actions: torch.Tensor, centering_weights: torch.Tensor | None = None,
                value_stop_gradient: bool | None = None) -> AgentOutput:
        """Teacher-forced pass over ``actions [B, D]``: log-probs, entropies, value and head terms.

        ``centering_weights [B, D, K]``: the behaviour policy's bin distributions recorded at rollout
        (the head's policy-centering weights); the current ones are used when None.
        ``value_stop_gradient``: overrides the configured flag for this call (critic warm-up sets it).
        """
        ev = self.policy.evaluate(obs, actions)
        detach = self.value_stop_gradient if value_stop_gradient is None else value_stop_gradient
        value = self.value(obs, ev.features.detach() if detach else ev.features)
        head = None
        if self.adv_head is not None:
            w = ev.bin_probs if centering_weights is None else centering_weights
            head = self.adv_head(ev.features, actions, w)
        return AgentOutput(ev.logp, ev.entropy, ev.bin_probs, ev.features, value, head)
