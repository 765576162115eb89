"""Value head and the structured advantage head (ALGORITHM.md §3-§4).

The structured head scores a D-dimensional discrete action ``a = (a^1..a^D)``, ``a^i in {0..K-1}``::

    A_phi(s, a) = b(s) + sum_i u~_i(s, a^i) + sum_{i<j} p~_ij(s, a^i, a^j)

* ``b(s)``: shared state term.
* ``u_i(s, k) = <q_i(s), g_k> + c_ik``: per-dim term from a state query per dim (a per-dim linear map
  of the state code), a bin embedding ``g_k`` (learned, or a frozen one such as the VLA's own
  action-token embeddings, projected) and a free per-dim bin table ``c``.
* ``p_ij(s, k, m) = <l_i(s, k), diag(s_ij) rho_j(s, m)>``: low-rank bilinear pairwise term with factors
  ``l_i(s, k) = (1 + gain_i(s)) * (P_i g_k + T_ik) in R^r`` (a bin pattern per dim from the bin
  embedding and a free table, scaled per rank channel by the state; likewise ``rho``) and a per-pair
  diagonal gate ``s_ij``.
  No K x K table is ever built.

Centering (§4) de-means every dim over its own bins with weights ``w_i`` (policy or uniform)::

    u~_i(a^i)        = u_i(a^i) - sum_k w_i(k) u_i(k)
    p~_ij(a^i, a^j)  = (l_i(a^i) - l_bar_i) . diag(s_ij) (rho_j(a^j) - rho_bar_j)

Every term is linear in its bin pattern, so the weighted means only need ``w_i @ g`` and ``w_i @ T``:
the forward pass costs O(B.D.K.(E + r)), and no ``[B, D, K, r]`` tensor is built.
``score_all_bins`` materialises every bin's terms for tests and diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["CENTERINGS", "HeadOutput", "StructuredAdvantageHead", "ValueHead"]

CENTERINGS = ("policy", "uniform", "none")


def _mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2) -> nn.Sequential:
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers):
        mods += [nn.Linear(dim, hidden), nn.SiLU()]
        dim = hidden
    mods.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*mods)


class ValueHead(nn.Module):
    """``V(s)`` from the state feature ``h`` (ALGORITHM.md §2)."""

    def __init__(self, feature_dim: int, hidden_size: int = 64, num_layers: int = 2) -> None:
        super().__init__()
        self.net = _mlp(feature_dim, hidden_size, 1, num_layers)
        # A small last layer keeps the first value estimates near 0 (CleanRL uses std=1 on a
        # separate critic; on a shared trunk a large start would dominate the trunk's gradients).
        nn.init.normal_(self.net[-1].weight, std=0.01)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)  # [B]


@dataclass
class HeadOutput:
    """What the structured head says about the taken actions.

    Attributes:
        shared: ``[B]`` the state term ``b(s)``.
        per_dim: ``[B, D]`` centered per-dim terms ``u~_i(s, a^i)`` at the taken actions.
        pair: ``[B, D, D]`` centered pairwise terms ``p~_ij(s, a^i, a^j)``; only ``i < j`` is filled,
            the rest is 0.
        total: ``[B]`` ``A_phi(s, a) = shared + per_dim.sum(-1) + pair.sum((-1, -2))``.
    """

    shared: torch.Tensor
    per_dim: torch.Tensor
    pair: torch.Tensor
    total: torch.Tensor

    def detach(self) -> HeadOutput:
        return HeadOutput(self.shared.detach(), self.per_dim.detach(), self.pair.detach(), self.total.detach())


@dataclass
class AllBinScores:
    """Every bin's raw (uncentered) terms: ``u [B, D, K]``, ``left/right [B, D, K, r]``, ``gate [D, D, r]``."""

    shared: torch.Tensor
    u: torch.Tensor
    left: torch.Tensor | None
    right: torch.Tensor | None
    gate: torch.Tensor | None


class StructuredAdvantageHead(nn.Module):
    """Shared + per-dim + low-rank pairwise advantage head over the state feature (ALGORITHM.md §3).

    Args:
        feature_dim: width of the state feature ``h``.
        action_dims: ``D``.
        num_bins: ``K`` (every dim has the same number of bins, as in every VLA action tokenizer).
        hidden_size: width of the state trunk.
        bin_embed_dim: width ``E`` of the bin embedding the per-dim and pairwise terms read.
        rank: ``r`` of the pairwise bilinear factors.
        pairwise: build the second-order terms (``False`` = the note's idea 1, first order only).
        centering: ``policy`` (weights = the policy's bin distribution; needs ``weights`` in forward),
            ``uniform`` (BDQ exactly) or ``none`` (the note's raw heads).
        stop_gradient: detach ``h`` so the head never trains the trunk.
        bin_embeddings: optional frozen ``[K, E_ext]`` embeddings (e.g. the VLA's action-token rows),
            projected to ``E``; a learned ``[K, E]`` table otherwise.
    """

    def __init__(
        self,
        feature_dim: int,
        action_dims: int,
        num_bins: int,
        *,
        hidden_size: int = 64,
        bin_embed_dim: int = 32,
        rank: int = 8,
        pairwise: bool = True,
        centering: str = "policy",
        stop_gradient: bool = True,
        bin_embeddings: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"centering must be one of {CENTERINGS}, got {centering!r}")
        self.action_dims, self.num_bins, self.rank = action_dims, num_bins, rank
        self.pairwise, self.centering, self.stop_gradient = pairwise, centering, stop_gradient
        D, K, E, H = action_dims, num_bins, bin_embed_dim, hidden_size

        self.trunk = nn.Sequential(nn.Linear(feature_dim, H), nn.SiLU(), nn.Linear(H, H), nn.SiLU())
        self.shared_out = nn.Linear(H, 1)
        if bin_embeddings is None:
            self.bin_embedding = nn.Parameter(torch.randn(K, E) / E**0.5)
            self.bin_proj = None
        else:
            if bin_embeddings.shape[0] != K:
                raise ValueError(f"bin_embeddings has {bin_embeddings.shape[0]} rows, expected num_bins={K}")
            self.register_buffer("frozen_bin_embedding", bin_embeddings.detach().clone().float())
            self.bin_proj = nn.Linear(bin_embeddings.shape[1], E)
        # Per-dim linear maps of the shared state code: dim i reads its own directions of z
        # (a shared map plus a dim embedding would make the state dependence the same for every dim).
        self.query_weight = nn.Parameter(torch.randn(D, H, E) / H**0.5)
        self.query_bias = nn.Parameter(torch.zeros(D, E))
        self.per_dim_table = nn.Parameter(torch.zeros(D, K))
        if pairwise:
            # factor l_i(s, k) = (1 + gain_i(s)) * (P_i g_k + T_ik): a bin pattern per dim, scaled per
            # channel by the state (cheap: O(B.D.H.r) for the state part)
            self.left_proj = nn.Parameter(torch.randn(D, E, rank) * 0.1 / E**0.5)
            self.right_proj = nn.Parameter(torch.randn(D, E, rank) * 0.1 / E**0.5)
            self.left_gain = nn.Parameter(torch.zeros(D, H, rank))
            self.right_gain = nn.Parameter(torch.zeros(D, H, rank))
            # Small random (not zero) tables: with both factors at 0 the bilinear term has no gradient.
            self.left_table = nn.Parameter(torch.randn(D, K, rank) * 0.1)
            self.right_table = nn.Parameter(torch.randn(D, K, rank) * 0.1)
            self.pair_gate = nn.Parameter(torch.ones(D, D, rank))
        self.register_buffer("upper", torch.ones(D, D).triu(1).bool(), persistent=False)

    # -- pieces -------------------------------------------------------------------------------
    def bin_features(self) -> torch.Tensor:
        """``[K, E]`` the bin embeddings the terms read."""
        if self.bin_proj is None:
            return self.bin_embedding
        return self.bin_proj(self.frozen_bin_embedding)

    def _state(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z [B, H]`` the state code and ``q [B, D, E]`` each dim's query."""
        h = features.detach() if self.stop_gradient else features
        z = self.trunk(h.float())  # [B, H]
        q = torch.einsum("bh,dhe->bde", z, self.query_weight) + self.query_bias  # [B, D, E]
        return z, q

    def _factor_gains(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """State gains ``1 + gain_i(s)`` of the left / right factors, ``[B, D, r]`` each."""
        gl = 1.0 + torch.einsum("bh,dhr->bdr", z, self.left_gain)
        gr = 1.0 + torch.einsum("bh,dhr->bdr", z, self.right_gain)
        return gl, gr

    def _factor_tables(self, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """State-free bin patterns ``P_i g_k + T_ik``, ``[D, K, r]`` each."""
        lt = torch.einsum("ke,der->dkr", G, self.left_proj) + self.left_table
        rt = torch.einsum("ke,der->dkr", G, self.right_proj) + self.right_table
        return lt, rt

    def _weights(self, weights: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
        if self.centering == "none":
            return None
        if self.centering == "uniform":
            B = like.shape[0]
            return like.new_full((B, self.action_dims, self.num_bins), 1.0 / self.num_bins)
        if weights is None:
            raise ValueError("centering='policy' needs the policy's bin probabilities as `weights` [B, D, K]")
        return weights.detach().to(like.dtype)

    # -- forward ------------------------------------------------------------------------------
    def forward(
        self, features: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor | None = None
    ) -> HeadOutput:
        """Score the taken ``actions [B, D]`` (long) given ``features [B, H]``.

        ``weights [B, D, K]`` are the centering weights (the policy's per-dim bin distributions,
        detached); needed for ``centering='policy'`` and ignored otherwise.
        """
        z, q = self._state(features)
        G = self.bin_features()  # [K, E]
        w = self._weights(weights, z)  # [B, D, K] or None
        a = actions.long()
        B, D = a.shape

        g_taken = G[a]  # [B, D, E]
        table_taken = self.per_dim_table.gather(1, a.T).T  # [B, D]
        u_taken = (q * g_taken).sum(-1) + table_taken  # [B, D]
        if w is not None:
            g_mean = torch.einsum("bdk,ke->bde", w, G)  # [B, D, E]
            u_mean = (q * g_mean).sum(-1) + (w * self.per_dim_table[None]).sum(-1)  # [B, D]
            per_dim = u_taken - u_mean
        else:
            per_dim = u_taken

        shared = self.shared_out(z).squeeze(-1)  # [B]
        pair = features.new_zeros(B, D, D, dtype=per_dim.dtype)
        if self.pairwise:
            gl, gr = self._factor_gains(z)  # [B, D, r]
            lt, rt = self._factor_tables(G)  # [D, K, r]
            dims = torch.arange(D, device=a.device)
            left, right = lt[dims[None, :], a], rt[dims[None, :], a]  # [B, D, r] at the taken bins
            if w is not None:
                # weighted means over each dim's bins (the gain is state-only, so it factors out)
                left = left - torch.einsum("bdk,dkr->bdr", w, lt)
                right = right - torch.einsum("bdk,dkr->bdr", w, rt)
            left, right = gl * left, gr * right
            pair = torch.einsum("bir,ijr,bjr->bij", left, self.pair_gate, right)  # [B, D, D]
            pair = pair * self.upper
        total = shared + per_dim.sum(-1) + pair.sum((-1, -2))
        return HeadOutput(shared=shared, per_dim=per_dim, pair=pair, total=total)

    @torch.no_grad()
    def score_all_bins(self, features: torch.Tensor) -> AllBinScores:
        """Raw terms for every bin of every dim, in one batched call (tests, diagnostics).

        ``u [B, D, K]``; ``left / right [B, D, K, r]`` (None without pairwise). The centered pairwise
        term of bins ``(k, m)`` of dims ``(i, j)`` is ``(left[:, i, k] - l_bar_i) . gate[i, j] .
        (right[:, j, m] - rho_bar_j)``.
        """
        z, q = self._state(features)
        G = self.bin_features()
        u = torch.einsum("bde,ke->bdk", q, G) + self.per_dim_table[None]
        left = right = gate = None
        if self.pairwise:
            gl, gr = self._factor_gains(z)
            lt, rt = self._factor_tables(G)
            left = gl[:, :, None, :] * lt[None]  # [B, D, K, r]
            right = gr[:, :, None, :] * rt[None]
            gate = self.pair_gate
        return AllBinScores(self.shared_out(z).squeeze(-1), u, left, right, gate)
