"""Interval estimates and comparisons for the report's figures: pure functions on counts."""

from __future__ import annotations

import math
from statistics import NormalDist

from fathom.report.model import Estimate, PassRate


def z_value(confidence: float) -> float:
    """The two-sided normal quantile of a confidence level (0.95 -> 1.96)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence} must be between 0 and 1")
    return NormalDist().inv_cdf((1 + confidence) / 2)


def mean_estimate(n: int, mean: float, sd: float, z: float, min_n: int) -> Estimate:
    """Mean with a normal-approximation interval, clipped to [0, 1] (scores live there)."""
    if n < max(min_n, 1) or not math.isfinite(mean):
        return Estimate(n, None, None, None, None)
    sd = sd if math.isfinite(sd) else 0.0
    half = z * sd / math.sqrt(n)
    return Estimate(n, mean, sd, max(0.0, mean - half), min(1.0, mean + half))


def wilson(passed: int, n: int, z: float, min_n: int) -> PassRate:
    """Pass rate with the Wilson score interval, which stays sane near 0 and 1."""
    if n < max(min_n, 1):
        return PassRate(n, passed, None, None, None)
    p = passed / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return PassRate(n, passed, p, max(0.0, centre - half), min(1.0, centre + half))


def change_pct(current: float | None, previous: float | None) -> float | None:
    """Relative change in percent; None when either side is missing or previous is 0."""
    if current is None or previous is None or previous == 0:
        return None
    return (current - previous) / abs(previous) * 100


def difference_z(a: Estimate, b: Estimate) -> float | None:
    """Two-sample z of a.mean - b.mean (unequal variances); None when either is unmeasured."""
    if a.mean is None or b.mean is None or a.sd is None or b.sd is None:
        return None
    se = math.sqrt(a.sd**2 / a.n + b.sd**2 / b.n)
    if se == 0:
        # Two constant samples: any difference is certain, none is nothing.
        return 0.0 if a.mean == b.mean else math.copysign(math.inf, a.mean - b.mean)
    return (a.mean - b.mean) / se
