"""Success statistics of an evaluation: the Wilson interval and a summary of episodes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["Z95", "summarize", "wilson_interval"]

Z95 = 1.959964


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% with the default ``z``).

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at 0/n or n/n, the
    usual outcomes of a small robot evaluation. ``n = 0`` gives the uninformative (0, 1).
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} must lie in 0..n={n}")
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # the exact ends at 0/n and n/n, without rounding error
    lo = 0.0 if successes == 0 else max(0.0, center - half)
    hi = 1.0 if successes == n else min(1.0, center + half)
    return lo, hi


def summarize(successes: list[bool], lengths: list[float], returns: list[float]) -> dict[str, Any]:
    n, k = len(successes), int(sum(successes))
    lo, hi = wilson_interval(k, n)
    return {"success_rate": k / n if n else 0.0, "ci95": [lo, hi], "episodes": n, "successes": k,
            "mean_length": float(np.mean(lengths)) if n else 0.0,
            "mean_return": float(np.mean(returns)) if n else 0.0}
