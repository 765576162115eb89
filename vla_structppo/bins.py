"""The mappings between bins and continuous actions, in one place: K evenly spaced points per dim
(:class:`BinGrid`, every env's and this project's tokenizers'), and OpenVLA's coding (:class:`OpenVLABins`).

Dim ``i`` of an action is normalised to ``[-1, 1]`` by its bounds ``[low_i, high_i]`` and clipped; its K
bins are K evenly spaced points spanning the bounds *including both ends*, and a value goes to its
nearest point. So ``decode(encode(x)) = x`` for every bin value, the ends are reachable, an odd K has an
exact zero, and the quantisation error is at most ``(high - low) / (2 (K - 1))``.

Every env adapter decodes the bins it is given with this grid over its own action bounds, and the
action tokenizer maps a VLA's bin tokens through it (docs/architecture.md): one formula, written once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

__all__ = ["BinCoding", "BinGrid", "OpenVLABins"]


class BinCoding(Protocol):
    """What an env needs to turn a policy's bins into the continuous action it executes, and back (experts)."""

    num_bins: int

    @property
    def action_dims(self) -> int: ...

    def encode(self, actions: np.ndarray) -> np.ndarray: ...

    def decode(self, bins: np.ndarray) -> np.ndarray: ...

    def unnormalize(self, x: np.ndarray) -> np.ndarray:
        """Normalised continuous actions ``[..., D]`` in [-1, 1] (a regression head's) -> the env's actions."""
        ...


class BinGrid:
    """``num_bins`` points per dim spanning ``[low_i, high_i]`` (``low``, ``high``: D floats each)."""

    def __init__(self, low: Sequence[float], high: Sequence[float], num_bins: int) -> None:
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        if self.low.shape != self.high.shape or self.low.ndim != 1:
            raise ValueError(f"low and high must be two lists of D floats, got shapes {self.low.shape} and "
                             f"{self.high.shape}")
        if num_bins < 2:
            raise ValueError(f"need num_bins >= 2, got {num_bins}")
        if not (np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high)) and np.all(self.high > self.low)):
            raise ValueError("every dim needs finite bounds with high > low")
        self.num_bins = int(num_bins)

    @property
    def action_dims(self) -> int:
        return len(self.low)

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        """Continuous ``[..., D]`` -> ``[-1, 1]`` (clipped)."""
        a = np.asarray(actions, np.float64)
        return np.clip(2.0 * (a - self.low) / (self.high - self.low) - 1.0, -1.0, 1.0)

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """Continuous ``[..., D]`` -> the nearest bins ``int64 [..., D]``; out-of-bounds values clip."""
        a = np.asarray(actions, np.float64)
        if a.shape[-1] != self.action_dims:
            raise ValueError(f"actions have {a.shape[-1]} dims, the grid {self.action_dims}")
        return np.rint((self.normalize(a) + 1.0) * 0.5 * (self.num_bins - 1)).astype(np.int64)

    def decode(self, bins: np.ndarray) -> np.ndarray:
        """Bins ``[..., D]`` -> continuous ``low + (high - low) k / (K - 1)``; a bin outside 0..K-1 raises."""
        b = np.asarray(bins, np.int64)
        if b.size and (b.min() < 0 or b.max() >= self.num_bins):
            raise ValueError(f"bins must lie in 0..{self.num_bins - 1}, got {int(b.min())}..{int(b.max())}")
        return self.low + (self.high - self.low) * b / (self.num_bins - 1)

    def unnormalize(self, x: np.ndarray) -> np.ndarray:
        """``[-1, 1]`` -> ``[low, high]`` per dim."""
        return self.low + (self.high - self.low) * (np.clip(np.asarray(x, np.float64), -1.0, 1.0) + 1.0) / 2.0

    def values(self) -> np.ndarray:
        """``[K, D]``: the continuous value of bin k in dim i."""
        return self.decode(np.repeat(np.arange(self.num_bins)[:, None], self.action_dims, axis=1))


class OpenVLABins:
    """OpenVLA's action coding, exact in both directions (prismatic's ``ActionTokenizer`` and data pipeline).

    Encode: every dim with ``mask`` is normalised to ``2 (x - q01) / (q99 - q01 + 1e-8) - 1`` and clipped to
    [-1, 1] (a dim whose min equals its max, ``fixed``, becomes 0); the others (the gripper) are kept; then
    ``np.digitize`` over 256 uniform edges on [-1, 1] gives ``d`` in 1..256, and bin ``k = d - 1``. Decode:
    ``k`` is clipped to 0..254 and mapped to the 255 bin centres (the two highest bins decode alike), then
    un-normalised with ``where(mask, 0.5 (x + 1) (q99 - q01 + eps) + q01, x)`` (``eps`` 0 in OpenVLA, 1e-8 in
    OpenVLA-OFT). The vocabulary token of bin k is ``31999 - k`` (``32000 - d``; the action tokenizer's ``openvla``
    mode).
    """

    def __init__(self, q01: Sequence[float], q99: Sequence[float], mask: Sequence[bool] | None = None,
                 fixed: Sequence[bool] | None = None, num_bins: int = 256, eps: float = 0.0) -> None:
        self.q01 = np.asarray(q01, dtype=np.float64)
        self.q99 = np.asarray(q99, dtype=np.float64)
        D = len(self.q01)
        self.mask = np.asarray(mask if mask is not None else [True] * D, dtype=bool)
        self.fixed = np.asarray(fixed if fixed is not None else [False] * D, dtype=bool)
        if not (self.q99.shape == self.mask.shape == self.fixed.shape == (D,)):
            raise ValueError(f"q01, q99, mask and fixed must have one entry per dim ({D})")
        self.num_bins = int(num_bins)
        self.eps = float(eps)
        self.edges = np.linspace(-1.0, 1.0, self.num_bins)
        self.centers = (self.edges[:-1] + self.edges[1:]) / 2.0

    @property
    def action_dims(self) -> int:
        return len(self.q01)

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        a = np.asarray(actions, np.float64)
        x = np.where(self.mask, np.clip(2 * (a - self.q01) / (self.q99 - self.q01 + 1e-8) - 1, -1, 1), a)
        return np.where(self.fixed, 0.0, x)

    def encode(self, actions: np.ndarray) -> np.ndarray:
        a = np.asarray(actions, np.float64)
        if a.shape[-1] != self.action_dims:
            raise ValueError(f"actions have {a.shape[-1]} dims, the coding {self.action_dims}")
        return np.digitize(np.clip(self.normalize(a), -1.0, 1.0), self.edges).astype(np.int64) - 1

    def decode(self, bins: np.ndarray) -> np.ndarray:
        b = np.asarray(bins, np.int64)
        if b.size and (b.min() < 0 or b.max() >= self.num_bins):
            raise ValueError(f"bins must lie in 0..{self.num_bins - 1}, got {int(b.min())}..{int(b.max())}")
        return self.unnormalize(self.centers[np.clip(b, 0, self.num_bins - 2)])

    def unnormalize(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self.eps:
            return np.where(self.mask, 0.5 * (x + 1) * (self.q99 - self.q01 + self.eps) + self.q01, x)
        return np.where(self.mask, 0.5 * (x + 1) * (self.q99 - self.q01) + self.q01, x)
