"""Embedding rows of action-bin tokens that vary smoothly with the bin index (the prior a pretrained VLA has).

A VLA pretrained on robot data treats bin k and k+1 as nearly the same action; a random model treats them as
unrelated words, so neither cloning nor RL can share what one bin learns with its neighbours (under LoRA the
output rows stay frozen). The tiny offline models (tiny_vlms.py, tiny_openvla.py) give their bin tokens such rows.
"""

from __future__ import annotations

import torch

__all__ = ["ordinal_rows"]


def ordinal_rows(num: int, dim: int, std: float, max_cycles: float) -> torch.Tensor:
    """``[num, dim]`` embedding rows that vary smoothly with the row index (random Fourier features).

    Row k is ``P^T cos(w * k / (num - 1) + b)`` with ``dim`` random frequencies ``w`` uniform in
    ``[0, 2 pi max_cycles]``, phases ``b`` and a Gaussian projection ``P``, rescaled to ``std``: nearby rows
    are nearly parallel, rows far apart are nearly unrelated, and a dot product with any vector is a
    band-limited function of k, so a logit over the bins peaks at one place with a width of about
    ``num / (2 max_cycles)``. Draws from torch's global RNG (the caller seeds it).
    """
    position = torch.arange(num, dtype=torch.float64)[:, None] / max(num - 1, 1)  # [num, 1]
    freqs = torch.rand(dim, dtype=torch.float64) * (2 * torch.pi * max_cycles)
    phases = torch.rand(dim, dtype=torch.float64) * (2 * torch.pi)
    features = torch.cos(position * freqs + phases)  # [num, dim]
    rows = features @ torch.randn(dim, dim, dtype=torch.float64)
    return (rows * (std / rows.std())).float()
