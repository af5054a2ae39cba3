"""The statistics of regression detection: pure functions, numpy arrays in, frozen results out.

- Page's CUSUM (`page_path`, `page_test`), on standardised scores (`cusum_drop`);
- Wald's SPRT on pass/fail results, repeated (`sprt_drop`);
- per-item log-likelihood ratios of canary results (`item_llr`, with a Beta prior whose weight
  comes from the items' intra-class correlation, `prior_weight`);
- two-sample tests: Welch's t or Mann-Whitney U for a drop (`window_test`), and the
  two-sided Kolmogorov-Smirnov test for a change of shape (`shape_test`).

`probes.detect` applies them to series read from the store, with its DetectionSettings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from probes.detect_settings import WindowMethod

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.intp]
StrArray = npt.NDArray[np.str_]


@dataclass(frozen=True, slots=True)
class Reference:
    """The baseline a series is standardised against."""

    mean: float
    sd: float
    n: int

    @classmethod
    def of(cls, scores: FloatArray) -> Reference:
        """Mean, sample sd and count of baseline scores (sd 0 below two scores)."""
        n = int(scores.size)
        sd = float(np.std(scores, ddof=1)) if n > 1 else 0.0
        return cls(float(np.mean(scores)) if n else math.nan, sd, n)

    def shifted(self, margin_se: float, min_sd: float) -> tuple[float, float]:
        """(mean, sd) to standardise with: mean lowered by `margin_se` standard errors."""
        sd = max(self.sd, min_sd)
        return self.mean - margin_se * sd / math.sqrt(max(self.n, 1)), sd


@dataclass(frozen=True, slots=True)
class CusumResult:
    """Lower one-sided CUSUM over a series, in baseline-sd units."""

    statistic: float  # value after the last score: the evidence of a drop now
    peak: float
    alarm_at: int | None  # index of the first score at which the statistic passed h
    n: int

    @property
    def regression(self) -> bool:
        """True when the statistic passed h somewhere in the series."""
        return self.alarm_at is not None


def page_path(steps: FloatArray) -> FloatArray:
    """S_t = max(0, S_{t-1} + steps_t) from S_0 = 0, vectorised."""
    # Lindley's recursion equals the walk minus its running minimum (the walk starts at 0).
    walk = np.concatenate(([0.0], np.cumsum(steps)))
    return np.asarray(walk[1:] - np.minimum.accumulate(walk)[1:], dtype=np.float64)


def page_test(steps: FloatArray, h: float) -> CusumResult:
    """Page's CUSUM of `steps` (in time order) against the threshold h."""
    if steps.size == 0:
        return CusumResult(0.0, 0.0, None, 0)
    path = page_path(steps)
    above = np.flatnonzero(path > h)
    alarm = int(above[0]) if above.size else None
    return CusumResult(float(path[-1]), float(path.max()), alarm, int(steps.size))


def cusum_path(scores: FloatArray, mean: float, sd: float, k: float, clip: float) -> FloatArray:
    """S_t = max(0, S_{t-1} + z_t - k) for z = clip((mean - x) / sd), vectorised."""
    return page_path(np.clip((mean - scores) / sd, -clip, clip) - k)


def cusum_drop(
    scores: FloatArray, mean: float, sd: float, k: float, h: float, clip: float
) -> CusumResult:
    """One-sided CUSUM for a drop of the scores below `mean` (scores in time order)."""
    return page_test(np.clip((mean - scores) / sd, -clip, clip) - k, h)


@dataclass(frozen=True, slots=True)
class SprtResult:
    """Repeated Wald SPRT of H0 p = p0 against H1 p = p1 < p0 on pass/fail results."""

    llr: float  # log-likelihood ratio of the running test cycle (at the alarm, if any)
    alarm_at: int | None  # index of the result at which a cycle accepted H1
    n: int
    p0: float
    p1: float
    rate: float  # pass rate of the results seen

    @property
    def regression(self) -> bool:
        """True when a test cycle accepted H1 (pass rate dropped by delta)."""
        return self.alarm_at is not None


def sprt_bounds(alpha: float, beta: float) -> tuple[float, float]:
    """Wald's (upper, lower) log-likelihood-ratio boundaries."""
    return math.log((1 - beta) / alpha), math.log(beta / (1 - alpha))


def sprt_alternative(p0: float, delta: float) -> float:
    """p1 = p0 - delta, but never below p0 / 2: a rate under delta cannot drop by delta."""
    return max(p0 - delta, p0 / 2)


def baseline_rate(passed: BoolArray, margin_se: float) -> float:
    """p0 for the SPRT: the smoothed baseline pass rate lowered by `margin_se` standard errors."""
    n = int(passed.size)
    rate = (float(passed.sum()) + 0.5) / (n + 1)  # never exactly 0 or 1
    return rate - margin_se * math.sqrt(rate * (1 - rate) / max(n, 1))


def sprt_drop(passed: BoolArray, p0: float, delta: float, alpha: float, beta: float) -> SprtResult:
    """Repeated SPRT over pass/fail results in time order; stops at the first alarm."""
    p0 = min(max(p0, 1e-3), 1 - 1e-3)
    p1 = sprt_alternative(p0, delta)
    upper, lower = sprt_bounds(alpha, beta)
    step_pass, step_fail = math.log(p1 / p0), math.log((1 - p1) / (1 - p0))
    llr = 0.0
    for i, ok in enumerate(passed.tolist()):
        llr += step_pass if ok else step_fail
        if llr >= upper:
            return SprtResult(llr, i, int(passed.size), p0, p1, float(np.mean(passed[: i + 1])))
        if llr <= lower:
            llr = 0.0  # H0 accepted: start the next test cycle
    rate = float(np.mean(passed)) if passed.size else math.nan
    return SprtResult(llr, None, int(passed.size), p0, p1, rate)


MIN_ICC = 1e-3  # item rates no more alike than this: shrink to the overall rate (prior 999)


def prior_weight(counts: FloatArray, passes: FloatArray) -> float:
    """Beta prior weight m = 1/ICC - 1 of item pass rates, from baseline results per item."""
    # ANOVA estimator of the intra-class correlation of binary results (Fleiss). Greedy
    # canaries that pass or fail every time give ICC near 1: trust each item's history.
    # Items that all pass at one rate give ICC near 0: shrink to the pooled rate.
    seen = counts > 0
    n, s = counts[seen], passes[seen]
    k, total = int(n.size), float(n.sum())
    if k < 2 or total <= k:
        return 1 / MIN_ICC - 1
    rate, r = s.sum() / total, s / n
    between = float(np.sum(n * (r - rate) ** 2)) / (k - 1)
    within = float(np.sum(n * r * (1 - r))) / (total - k)
    n0 = (total - float(np.sum(n**2)) / total) / (k - 1)
    spread = between + (n0 - 1) * within
    icc = (between - within) / spread if spread > 0 else MIN_ICC
    return 1 / min(max(icc, MIN_ICC), 1 - MIN_ICC) - 1


def earlier_results(codes: IntArray, passed: BoolArray) -> tuple[FloatArray, FloatArray]:
    """For each result: how many results, and passes, of the same item came before it."""
    order = np.argsort(codes, kind="stable")
    ranked = codes[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, codes.size]))  # group start per position
    cum = np.concatenate(([0.0], np.cumsum(passed[order], dtype=np.float64)))
    at = np.arange(codes.size)
    count, passes = np.empty(codes.size), np.empty(codes.size)
    count[order], passes[order] = at - first, cum[at] - cum[first]
    return count, passes


def item_llr(
    base_items: StrArray, base_passed: BoolArray, items: StrArray, passed: BoolArray,
    delta: float, prior_min: float, clip: float,
) -> FloatArray:  # fmt: skip
    """Per-result LLR of 'every item lost a share of its pass rate' against 'unchanged'."""
    # H0: item i passes with its posterior mean p_i: Beta(m * rate, m * (1 - rate)) prior,
    # updated with the item's baseline results and its earlier results in this window (so a
    # new item that keeps failing soon stops counting: it is an item that fails, not a drop).
    # H1: p_i * (1 - rho). A failure weighs log(1 + rho p_i / (1 - p_i)), clipped; a pass
    # weighs log(1 - rho) whatever the item. rho = delta / rate loses delta points overall, and
    # is nearly the share that maximises the LLR's drift when a regression instead flips some
    # items from passing to failing outright.
    codes = np.unique(np.concatenate([base_items, items]), return_inverse=True)[1].ravel()
    base_codes, now_codes = codes[: base_items.size], codes[base_items.size :]
    size = int(codes.max()) + 1 if codes.size else 0
    counts = np.bincount(base_codes, minlength=size).astype(np.float64)
    passes = np.bincount(base_codes, weights=base_passed, minlength=size).astype(np.float64)
    rate = (float(passes.sum()) + 0.5) / (float(counts.sum()) + 1)  # never exactly 0 or 1
    m = max(prior_weight(counts, passes), prior_min)
    before, passed_before = earlier_results(now_codes, passed)
    p = (passes[now_codes] + passed_before + m * rate) / (counts[now_codes] + before + m)
    rho = min(delta / rate, 0.5)  # as sprt_alternative: a rate cannot lose more than half
    fail = np.minimum(np.log1p(rho * p / (1 - p)), clip)
    return np.where(passed, math.log1p(-rho), fail)


@dataclass(frozen=True, slots=True)
class WindowResult:
    """A two-sample test of 'the current window scores lower than the baseline'."""

    method: WindowMethod
    statistic: float
    p_value: float
    baseline_mean: float
    current_mean: float
    effect_sd: float  # (baseline mean - current mean) / baseline sd
    regression: bool


def window_test(
    baseline: FloatArray,
    current: FloatArray,
    method: WindowMethod,
    alpha: float,
    min_effect_sd: float,
    min_sd: float = 0.02,
) -> WindowResult:
    """Welch's t (unequal variances) or Mann-Whitney U, one-sided for a drop."""
    from scipy import stats  # scipy is slow to import; only detection needs it

    b_mean, c_mean = float(np.mean(baseline)), float(np.mean(current))
    if np.ptp(baseline) == 0 and np.ptp(current) == 0:
        # Two constant windows: no test needed, and scipy would divide by zero.
        statistic, p_value = 0.0, (0.0 if b_mean > c_mean else 1.0)
    elif method == "welch":
        res = stats.ttest_ind(baseline, current, equal_var=False, alternative="greater")
        statistic, p_value = float(res.statistic), float(res.pvalue)
    else:
        res = stats.mannwhitneyu(baseline, current, alternative="greater")
        statistic, p_value = float(res.statistic), float(res.pvalue)
    b_sd = float(np.std(baseline, ddof=1)) if baseline.size > 1 else 0.0
    effect = (b_mean - c_mean) / max(b_sd, min_sd)
    hit = p_value < alpha and effect >= min_effect_sd
    return WindowResult(method, statistic, p_value, b_mean, c_mean, effect, hit)


def shape_test(baseline: FloatArray, current: FloatArray) -> tuple[float, float]:
    """(D, p) of the two-sided two-sample Kolmogorov-Smirnov test of two length samples."""
    from scipy import stats

    res = stats.ks_2samp(baseline, current)
    return float(res.statistic), float(res.pvalue)
