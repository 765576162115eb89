"""Small fast policies on state vectors: a multi-head MLP (independent dims) and an autoregressive one.

Both implement the policy protocol, so every algorithm feature trains for real in seconds, and both
branches of ALGORITHM.md §5 (independent vs autoregressive) are exercised by training, not only tests.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import ActOutput, EvalOutput, StateInputsMixin, categorical_stats, sample_bins

__all__ = ["FIRST_LAYER", "AutoregressiveMLPPolicy", "MLPPolicy", "ObservationCritic", "orthogonal_init"]

# the first trunk layer of both policies: its weight is ``[hidden, obs_dim]`` (a checkpoint's input width)
FIRST_LAYER = "trunk.0.weight"


def _trunk(obs_dim: int, hidden: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    dim = obs_dim
    for _ in range(layers):
        mods += [nn.Linear(dim, hidden), nn.Tanh()]
        dim = hidden
    return nn.Sequential(*mods)


def _orthogonal(layer: nn.Linear, gain: float) -> None:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)


def orthogonal_init(policy: nn.Module) -> None:
    """CleanRL's initialisation of a state policy: orthogonal trunk layers (gain sqrt 2), policy output 0.01."""
    for layer in policy.trunk:
        if isinstance(layer, nn.Linear):
            _orthogonal(layer, 2**0.5)
    if isinstance(policy, MLPPolicy):
        _orthogonal(policy.logits, 0.01)
    else:  # the autoregressive output maps are per-dim parameters [D, H, K]
        for i in range(policy.out_weight.shape[0]):
            nn.init.orthogonal_(policy.out_weight.data[i], 0.01)
        nn.init.zeros_(policy.out_bias)


class ObservationCritic(nn.Module):
    """``V(s)`` from the observation itself (``policy.value_network: separate``), CleanRL's critic: a tanh
    MLP of ``num_layers`` x ``hidden_size``; with ``orthogonal`` its init (gain sqrt 2, output 1)."""

    def __init__(self, obs_dim: int, hidden_size: int = 64, num_layers: int = 2, orthogonal: bool = False) -> None:
        super().__init__()
        self.trunk = _trunk(obs_dim, hidden_size, num_layers)
        self.out = nn.Linear(hidden_size, 1)
        if orthogonal:
            for layer in self.trunk:
                if isinstance(layer, nn.Linear):
                    _orthogonal(layer, 2**0.5)
            _orthogonal(self.out, 1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.out(self.trunk(obs)).squeeze(-1)  # [B]


def _as_tensor(obs, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(obs, dtype=torch.float32, device=device)


class MLPPolicy(StateInputsMixin, nn.Module):
    """``D`` independent categorical heads on a shared tanh MLP trunk: ``pi(a|s) = prod_i pi_i(a^i|s)``."""

    autoregressive = False

    def __init__(self, obs_dim: int, action_dims: int, num_bins: int, hidden_size: int = 64, num_layers: int = 2):
        super().__init__()
        self.action_dims, self.num_bins, self.feature_dim = action_dims, num_bins, hidden_size
        self.obs_dim = obs_dim
        self.trunk = _trunk(obs_dim, hidden_size, num_layers)
        self.logits = nn.Linear(hidden_size, action_dims * num_bins)
        # Near-uniform initial policy (CleanRL's std=0.01 actor init).
        nn.init.normal_(self.logits.weight, std=0.01)
        nn.init.zeros_(self.logits.bias)

    def encode(self, obs) -> torch.Tensor:
        """The state feature ``h [B, H]`` alone (value bootstrap)."""
        return self.trunk(_as_tensor(obs, self.logits.weight.device))

    def _logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features).view(-1, self.action_dims, self.num_bins)  # [B, D, K]

    def act(self, obs, *, deterministic: bool = False, temperature: float = 1.0) -> ActOutput:
        features = self.trunk(_as_tensor(obs, self.logits.weight.device))  # [B, H]
        logits = self._logits(features)
        actions = sample_bins(logits, deterministic, temperature)
        logp, _, probs = categorical_stats(logits, actions)
        return ActOutput(actions, logp, features, probs)

    def evaluate(self, obs, actions: torch.Tensor) -> EvalOutput:
        features = self.trunk(_as_tensor(obs, self.logits.weight.device))
        logp, entropy, probs = categorical_stats(self._logits(features), actions)
        return EvalOutput(logp, entropy, features, probs)


class AutoregressiveMLPPolicy(StateInputsMixin, nn.Module):
    """``pi(a|s) = prod_i pi_i(a^i | s, a^{<i})``, the factorisation of a VLA's action tokens.

    Dim i reads ``c_i = tanh(h + sum_{j<i} E_j[a^j])`` (``E_j`` a learned embedding of dim j's bins)
    through its own linear map to K logits. ``act`` decodes the D dims one after another;
    ``evaluate`` is one teacher-forced pass (an exclusive cumulative sum), like a VLA's update.
    """

    autoregressive = True

    def __init__(self, obs_dim: int, action_dims: int, num_bins: int, hidden_size: int = 64, num_layers: int = 2):
        super().__init__()
        self.action_dims, self.num_bins, self.feature_dim = action_dims, num_bins, hidden_size
        self.obs_dim = obs_dim
        self.trunk = _trunk(obs_dim, hidden_size, num_layers)
        self.action_embedding = nn.Parameter(torch.randn(action_dims, num_bins, hidden_size) * 0.1)
        self.out_weight = nn.Parameter(torch.randn(action_dims, hidden_size, num_bins) * 0.01)
        self.out_bias = nn.Parameter(torch.zeros(action_dims, num_bins))

    def encode(self, obs) -> torch.Tensor:
        """The state feature ``h [B, H]`` alone (value bootstrap)."""
        return self.trunk(_as_tensor(obs, self.out_bias.device))

    def _dim_logits(self, context: torch.Tensor, i: int) -> torch.Tensor:
        return torch.tanh(context) @ self.out_weight[i] + self.out_bias[i]  # [B, K]

    def act(self, obs, *, deterministic: bool = False, temperature: float = 1.0) -> ActOutput:
        features = self.trunk(_as_tensor(obs, self.out_bias.device))  # [B, H]
        context = features
        actions, logits_all = [], []
        for i in range(self.action_dims):
            logits = self._dim_logits(context, i)  # [B, K]
            a_i = sample_bins(logits[:, None], deterministic, temperature)[:, 0]  # [B]
            actions.append(a_i)
            logits_all.append(logits)
            context = context + self.action_embedding[i][a_i]
        actions_t = torch.stack(actions, dim=1)  # [B, D]
        logp, _, probs = categorical_stats(torch.stack(logits_all, dim=1), actions_t)
        return ActOutput(actions_t, logp, features, probs)

    def evaluate(self, obs, actions: torch.Tensor) -> EvalOutput:
        features = self.trunk(_as_tensor(obs, self.out_bias.device))  # [B, H]
        a = actions.long()
        dims = torch.arange(self.action_dims, device=a.device)
        emb = self.action_embedding[dims[None, :], a]  # [B, D, H]
        before = torch.cumsum(emb, dim=1) - emb  # [B, D, H] sum over j < i
        context = torch.tanh(features[:, None, :] + before)  # [B, D, H]
        logits = torch.einsum("bdh,dhk->bdk", context, self.out_weight) + self.out_bias  # [B, D, K]
        logp, entropy, probs = categorical_stats(logits, a)
        return EvalOutput(logp, entropy, features, probs)
