"""The policy protocol shared by rollout, update, SFT and eval (ARCHITECTURE.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["ActOutput", "EvalOutput", "Policy", "categorical_stats"]


@dataclass
class ActOutput:
    """``actions [B, D]`` (long bins), ``logp [B, D]`` per-dim log-probs of them, ``features [B, H]``
    the state feature, ``bin_probs [B, D, K]`` the per-dim bin distributions the actions were drawn
    from (``pi_i(. | s, a^{<i})``; the head's policy centering weights)."""

    actions: torch.Tensor
    logp: torch.Tensor
    features: torch.Tensor
    bin_probs: torch.Tensor


@dataclass
class EvalOutput:
    """Teacher-forced view of given actions: ``logp [B, D]``, ``entropy [B, D]``, ``features [B, H]``,
    ``bin_probs [B, D, K]``."""

    logp: torch.Tensor
    entropy: torch.Tensor
    features: torch.Tensor
    bin_probs: torch.Tensor


@runtime_checkable
class Policy(Protocol):
    """What acts. ``autoregressive`` says whether ``pi_i`` sees earlier dims' actions (ALGORITHM.md §1)."""

    autoregressive: bool
    action_dims: int
    num_bins: int
    feature_dim: int

    def act(self, obs: Any, *, deterministic: bool = False, temperature: float = 1.0) -> ActOutput: ...

    def evaluate(self, obs: Any, actions: torch.Tensor) -> EvalOutput: ...

    def encode(self, obs: Any) -> torch.Tensor: ...


def categorical_stats(logits: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logp [B, D], entropy [B, D], probs [B, D, K])`` of ``actions [B, D]`` under ``logits [B, D, K]``.

    The softmax runs over the K bins only (ALGORITHM.md §1: restricted in rollout and update alike).
    """
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [B, D, K]
    probs = logprobs.exp()
    logp = logprobs.gather(-1, actions.long()[..., None]).squeeze(-1)
    entropy = -(probs * logprobs).sum(-1)
    return logp, entropy, probs
