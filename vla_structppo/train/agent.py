"""The trainable bundle: policy + value head + structured advantage head, as ONE module.

Everything the update needs comes out of one ``forward`` so DDP (Accelerate) sees a single forward
per backward and synchronises every parameter's gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..algo.heads import HeadOutput, StructuredAdvantageHead, ValueHead
from ..config import TrainConfig
from ..policies.mlp import AutoregressiveMLPPolicy, MLPPolicy

__all__ = ["Agent", "AgentOutput", "build_policy"]

POLICIES = {"mlp": MLPPolicy, "ar_mlp": AutoregressiveMLPPolicy}


def build_policy(cfg: TrainConfig, obs_dim: int) -> nn.Module:
    cls = POLICIES[cfg.policy.type]
    return cls(obs_dim, cfg.env.action_dims, cfg.env.num_bins, cfg.policy.hidden_size, cfg.policy.num_layers)


@dataclass
class AgentOutput:
    logp: torch.Tensor  # [B, D]
    entropy: torch.Tensor  # [B, D]
    bin_probs: torch.Tensor  # [B, D, K]
    features: torch.Tensor  # [B, H]
    value: torch.Tensor  # [B]
    head: HeadOutput | None


class Agent(nn.Module):
    def __init__(self, policy: nn.Module, value_head: ValueHead, adv_head: StructuredAdvantageHead | None):
        super().__init__()
        self.policy = policy
        self.value_head = value_head
        self.adv_head = adv_head

    @classmethod
    def from_config(cls, cfg: TrainConfig, obs_dim: int) -> Agent:
        policy = build_policy(cfg, obs_dim)
        value = ValueHead(policy.feature_dim, cfg.policy.value_hidden_size)
        head = None
        if cfg.head.enabled:
            h = cfg.head
            head = StructuredAdvantageHead(
                policy.feature_dim, cfg.env.action_dims, cfg.env.num_bins, hidden_size=h.hidden_size,
                bin_embed_dim=h.bin_embed_dim, rank=h.rank, pairwise=h.pairwise, centering=h.centering,
                stop_gradient=h.stop_gradient,
            )
        return cls(policy, value, head)

    @property
    def autoregressive(self) -> bool:
        return bool(self.policy.autoregressive)

    def forward(self, obs: Any, actions: torch.Tensor, centering_weights: torch.Tensor | None = None) -> AgentOutput:
        """Teacher-forced pass over ``actions [B, D]``: log-probs, entropies, value and head terms.

        ``centering_weights [B, D, K]``: the behaviour policy's bin distributions recorded at rollout
        (the head's policy-centering weights); the current ones are used when None.
        """
        ev = self.policy.evaluate(obs, actions)
        value = self.value_head(ev.features)
        head = None
        if self.adv_head is not None:
            w = ev.bin_probs if centering_weights is None else centering_weights
            head = self.adv_head(ev.features, actions, w)
        return AgentOutput(ev.logp, ev.entropy, ev.bin_probs, ev.features, value, head)
