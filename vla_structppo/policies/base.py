"""The policy protocol shared by rollout, update, SFT and eval (ARCHITECTURE.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

__all__ = ["ActOutput", "EvalOutput", "Policy", "StateInputsMixin", "categorical_stats", "sample_bins",
           "select_batch"]


@dataclass
class ActOutput:
    """``actions [B, D]`` (long bins), ``logp [B, D]`` per-dim log-probs of them, ``features [B, H]``
    the state feature, ``bin_probs [B, D, K]`` the per-dim bin distributions the actions were drawn
    from (``pi_i(. | s, a^{<i})``; the head's policy centering weights). ``continuous [B, H, A]``: normalised
    continuous actions from a regression head (OpenVLA-OFT's L1 head), which an env executes instead of the bins;
    None for token policies."""

    actions: torch.Tensor
    logp: torch.Tensor
    features: torch.Tensor
    bin_probs: torch.Tensor
    continuous: torch.Tensor | None = None


@dataclass
class EvalOutput:
    """Teacher-forced view of given actions: ``logp [B, D]``, ``entropy [B, D]``, ``features [B, H]``,
    ``bin_probs [B, D, K]``."""

    logp: torch.Tensor
    entropy: torch.Tensor
    features: torch.Tensor
    bin_probs: torch.Tensor


class Policy(Protocol):
    """What acts. ``autoregressive`` says whether ``pi_i`` sees earlier dims' actions (ALGORITHM.md §1)."""

    autoregressive: bool
    action_dims: int
    num_bins: int
    feature_dim: int

    def prepare(self, obs: Any) -> Any:
        """Env observations (a batch) -> model inputs on the policy's device (a tensor or a dict of
        batch-first tensors). Rollouts store these, so the update never re-runs the preprocessing."""
        ...

    def collate(self, batches: list[Any]) -> Any:
        """Concatenate prepared inputs of several steps along the batch dim (padding as needed)."""
        ...

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


def sample_bins(logits: torch.Tensor, deterministic: bool, temperature: float) -> torch.Tensor:
    """Bins ``[...]`` from ``logits [..., K]``: the argmax, or one draw per row from the softmax at ``temperature``
    (every policy samples here: one ``multinomial`` over all rows)."""
    if deterministic:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1).reshape(probs.shape[:-1])


def select_batch(inputs: Any, idx: torch.Tensor) -> Any:
    """Rows ``idx`` of prepared inputs (a tensor or a dict of batch-first tensors)."""
    if isinstance(inputs, dict):
        return {k: v[idx] for k, v in inputs.items()}
    return inputs[idx]


class StateInputsMixin:
    """``prepare`` / ``collate`` for policies on state vectors: float32 tensors on the policy's device."""

    def prepare(self, obs: Any) -> torch.Tensor:
        device = next(self.parameters()).device  # type: ignore[attr-defined]
        return torch.as_tensor(obs, dtype=torch.float32, device=device)

    def collate(self, batches: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(batches, dim=0)
