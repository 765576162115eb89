"""The statistics the benchmarks report, in one place: means over seeds with 95% Student-t intervals, paired
per-seed differences and ratios with theirs, and the steps a learning curve takes to reach a level.

The scripts import it as ``from stats import ...``: run as ``python benchmarks/X.py``, ``benchmarks/`` is on
the path. (Success rates over episodes get Wilson intervals: ``vla_structppo.eval.wilson_interval``.)

Seeds are few (3-5), so the interval of a mean is ``t * sd / sqrt(n)`` with the t quantile of n - 1 degrees
of freedom, not the normal 1.96 (at 3 seeds the normal one would be 2.2x too narrow).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["T95", "geometric_mean_ci", "mean_ci", "mean_std", "paired_ci", "samples_to", "t95"]

# Two-sided 95% Student-t quantiles t(0.975; df) for df = 1..30, to 3 decimals (checked against
# scipy.stats.t.ppf(0.975, df); scipy is not a dependency of the project, so the table stays).
T95: dict[int, float] = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
    11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086,
    21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042,
}


def t95(df: int) -> float:
    """The two-sided 95% t quantile for ``df`` degrees of freedom; past the table the normal 1.96 (within 4%)."""
    return T95.get(df, 1.96)


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the deviation is NaN for one value."""
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else float("nan")
    return m, sd


def mean_ci(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t interval, ``t95(n - 1) * sd / sqrt(n)``; NaN for one value."""
    m, sd = mean_std(xs)
    if len(xs) < 2:
        return m, float("nan")
    return m, t95(len(xs) - 1) * sd / math.sqrt(len(xs))


def paired_ci(diffs: Sequence[float]) -> tuple[float, float, float]:
    """Mean of per-seed differences (mode − baseline on the same seed) and its 95% interval ``(mean, lo, hi)``.

    Pairing removes the between-seed variance both runs share, so the interval is that of the differences,
    not of the two means.
    """
    m, half = mean_ci(diffs)
    return m, m - half, m + half


def geometric_mean_ci(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Geometric mean of per-seed ratios (mode ÷ baseline) and its 95% interval, from :func:`paired_ci` on
    the log ratios: ``(ratio, lo, hi)``."""
    m, lo, hi = paired_ci([math.log(r) for r in ratios])
    return math.exp(m), math.exp(lo), math.exp(hi)


def samples_to(curve: Sequence[tuple[float, float]], level: float, limit: float) -> tuple[float, bool]:
    """Env steps until the mean of 3 consecutive points of ``curve`` (``(steps, value)`` per update) reaches
    ``level``, and whether it did; ``(limit, False)`` if never (a censored run counts at the budget)."""
    for n in range(2, len(curve)):
        if sum(v for _, v in curve[n - 2:n + 1]) / 3 >= level:
            return curve[n][0], True
    return float(limit), False
