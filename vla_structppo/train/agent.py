"""The trainable bundle: policy + value head + structured advantage head, as ONE module.

Everything the update needs comes out of one ``forward`` so DDP (Accelerate) sees a single forward
per backward and synchronises every parameter's gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..algo.heads import HeadOutput, StructuredAdvantageHead, ValueHead
from ..config import TrainConfig
from ..policies.mlp import AutoregressiveMLPPolicy, MLPPolicy

__all__ = ["Agent", "AgentOutput", "build_policy"]

POLICIES: dict[str, Any] = {"mlp": MLPPolicy, "ar_mlp": AutoregressiveMLPPolicy, "vla": "policies.vla.VLAPolicy"}
POLICY_FILE = "policy.safetensors"


def build_policy(cfg: TrainConfig, envs) -> nn.Module:
    """The configured policy for ``envs`` (a VLA loads its checkpoint; the MLPs read the obs width)."""
    if cfg.policy.type == "vla":
        from ..policies.vla_loading import load_vla_policy

        return load_vla_policy(cfg)
    cls = POLICIES[cfg.policy.type]
    obs_dim = envs.single_observation_space.shape[0]
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
    def __init__(self, policy: nn.Module, value_head: ValueHead, adv_head: StructuredAdvantageHead | None,
                 value_stop_gradient: bool = False):
        super().__init__()
        self.policy = policy
        self.value_head = value_head
        self.adv_head = adv_head
        self.value_stop_gradient = value_stop_gradient

    @classmethod
    def from_config(cls, cfg: TrainConfig, envs) -> Agent:
        policy = build_policy(cfg, envs)
        value = ValueHead(policy.feature_dim, cfg.policy.value_hidden_size)
        head = None
        if cfg.head.enabled:
            h = cfg.head
            # a VLA's bins are vocabulary tokens: the head reads their (frozen) input embeddings
            bins = policy.bin_embeddings() if hasattr(policy, "bin_embeddings") else None
            head = StructuredAdvantageHead(
                policy.feature_dim, cfg.env.action_dims, cfg.env.num_bins, hidden_size=h.hidden_size,
                bin_embed_dim=h.bin_embed_dim, rank=h.rank, pairwise=h.pairwise, centering=h.centering,
                stop_gradient=h.stop_gradient, bin_embeddings=bins,
            )
        return cls(policy, value, head, value_stop_gradient=cfg.policy.value_stop_gradient)

    # -- the policy's part of a checkpoint ---------------------------------------------------------
    @property
    def is_vla(self) -> bool:
        return hasattr(self.policy, "save_pretrained")

    def policy_files(self) -> list[str]:
        if self.is_vla:
            from ..policies.vla_loading import policy_files

            return policy_files(Path("."), lora=hasattr(self.policy.model, "peft_config"))
        return [POLICY_FILE]

    def save_policy(self, directory: Path) -> None:
        """Adapter + processor + action tokenizer for a VLA; one safetensors file for the small policies."""
        if self.is_vla:
            self.policy.save_pretrained(directory)
        else:
            from .checkpoint import save_module

            save_module(self.policy, directory / POLICY_FILE)

    def load_policy(self, directory: Path) -> None:
        if self.is_vla:
            from ..policies.vla_loading import load_policy_weights

            load_policy_weights(self.policy, directory)
        else:
            from .checkpoint import load_module

            load_module(self.policy, directory / POLICY_FILE)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Policy parameters that train (a VLA: the adapter); the heads have their own groups."""
        return [p for p in self.policy.parameters() if p.requires_grad]

    @property
    def autoregressive(self) -> bool:
        return bool(self.policy.autoregressive)

    def forward(self, obs: Any, actions: torch.Tensor, centering_weights: torch.Tensor | None = None,
                value_stop_gradient: bool | None = None) -> AgentOutput:
        """Teacher-forced pass over ``actions [B, D]``: log-probs, entropies, value and head terms.

        ``centering_weights [B, D, K]``: the behaviour policy's bin distributions recorded at rollout
        (the head's policy-centering weights); the current ones are used when None.
        ``value_stop_gradient``: overrides the configured flag for this call (critic warm-up sets it).
        """
        ev = self.policy.evaluate(obs, actions)
        detach = self.value_stop_gradient if value_stop_gradient is None else value_stop_gradient
        value = self.value_head(ev.features.detach() if detach else ev.features)
        head = None
        if self.adv_head is not None:
            w = ev.bin_probs if centering_weights is None else centering_weights
            head = self.adv_head(ev.features, actions, w)
        return AgentOutput(ev.logp, ev.entropy, ev.bin_probs, ev.features, value, head)
