"""Regression detection on quality scores: CUSUM, SPRT and a window test per series.

A series is one (model, deployment, probe), scored by one scorer: when an upgrade changes how
a probe scores (the `scorer` column names the version), only the newest scorer's rows count,
so the series starts a new baseline instead of reading the change as a regression. Its
baseline window is the `baseline` span before the current window (the last `window`). Three
tests run on it:

- a one-sided CUSUM on the current window's per-request scores, standardised against the
  baseline's mean and sd (fires on drops);
- a sequential test on canary pass/fail results (`passed` not NULL), reported as 'sprt'.
  When every current result names its golden item (`item_id`): Page's CUSUM of per-item
  log-likelihood ratios (`item_llr`; Page's CUSUM is Wald's SPRT restarted at 0 whenever it
  turns negative). Canaries are asked greedily, so each item passes nearly always or nearly
  never, and a failure of an item that used to pass is far stronger evidence than a pooled
  pass rate can carry. Otherwise Wald's SPRT on the pooled pass rate, p0 = the baseline rate,
  p1 = p0 - delta, restarted whenever it accepts H0 (the Grafana rule computes this one);
- a window test (Welch's t or Mann-Whitney U) of the current window against the baseline.

Beside the quality series, one answer-shape series per (model, deployment): the lengths (output
tokens) of its user answers, tested with a two-sided two-sample Kolmogorov-Smirnov test ('ks',
probe 'shape'): answers padded to three times their length, or cut to a few words, change
their shape before any score moves. It fires when p < `shape_alpha` and D >= `shape_min_d`.

The detector reports a CUSUM regression when the statistic passed h anywhere in the current
window (its peak, written to `fathom.regressions`); the Grafana rule computes the same statistic
in SQL and fires while its value now is above h, so the alert clears once quality recovers.

The statistics are pure functions in `probes.statistics` (numpy arrays in, frozen dataclasses
out); this module applies them to series, and `run_detection` is the store I/O around them.
The default parameters are the ones `bench/detect.py` measured.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from probes import detect_sql
from probes.detect_settings import DetectionSettings as DetectionSettings
from probes.statistics import (
    BoolArray,
    CusumResult,
    FloatArray,
    Reference,
    StrArray,
    baseline_rate,
    cusum_drop,
    item_llr,
    page_test,
    shape_test,
    sprt_bounds,
    sprt_drop,
    window_test,
)

if TYPE_CHECKING:
    from sidecar.store.client import Store

SHAPE = "shape"  # the answer-shape series: answer lengths of user traffic, not quality rows
SeriesKey = tuple[str, str, str]  # (model, deployment, probe)

REGRESSION_COLUMNS: tuple[str, ...] = (
    "ts",
    "model",
    "deployment",
    "probe",
    "test",
    "statistic",
    "baseline",
    "current",
    "n_baseline",
    "n_current",
)


def canary_drop(
    base_items: StrArray, base_passed: BoolArray, items: StrArray, passed: BoolArray,
    settings: DetectionSettings,
) -> CusumResult:  # fmt: skip
    """Page's CUSUM of per-item LLRs over current canary results (in time order)."""
    s = settings
    llr = item_llr(
        base_items, base_passed, items, passed, s.sprt_delta, s.item_prior_min, s.item_llr_clip
    )
    return page_test(llr, s.item_h)


# ---------------------------------------------------------------- one series, all tests


def _no_items() -> StrArray:
    return np.empty(0, dtype=np.str_)


@dataclass(frozen=True, slots=True)
class Series:
    """One (model, deployment, probe): baseline and current scores, current in time order."""

    key: SeriesKey
    baseline_scores: FloatArray
    baseline_passed: BoolArray  # canary results only (rows with `passed` not NULL)
    current_scores: FloatArray
    current_passed: BoolArray
    baseline_items: StrArray = field(default_factory=_no_items)  # item_id of each result
    current_items: StrArray = field(default_factory=_no_items)

    @property
    def itemised(self) -> bool:
        """True when every canary result carries its golden item's id: the per-item test runs."""
        return (
            self.baseline_items.size == self.baseline_passed.size
            and self.current_items.size == self.current_passed.size > 0
            and bool(np.all(self.current_items != ""))
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one test on one series: a `fathom.regressions` row when `regression`."""

    key: SeriesKey
    test: str  # 'cusum', 'sprt', 'welch', 'mannwhitney'
    statistic: float
    baseline: float
    current: float
    n_baseline: int
    n_current: int
    regression: bool
    threshold: float  # what `statistic` is compared with (h, the SPRT bound, alpha for p)

    def row(self, ts: datetime) -> list[Any]:
        """Values in REGRESSION_COLUMNS order."""
        model, deployment, probe = self.key
        return [
            ts,
            model,
            deployment,
            probe,
            self.test,
            self.statistic,
            self.baseline,
            self.current,
            self.n_baseline,
            self.n_current,
        ]


def evaluate(series: Series, settings: DetectionSettings) -> list[Outcome]:
    """Every test that has enough data for this series (sizes: DetectionSettings)."""
    if series.key[2] == SHAPE:
        return [_shape_outcome(series, settings)] if series.current_scores.size else []
    outcomes: list[Outcome] = []
    n_current = series.current_scores.size
    if series.baseline_scores.size >= settings.min_baseline and n_current:
        outcomes.append(_cusum_outcome(series, settings))
        if n_current >= settings.min_window:
            outcomes.append(_window_outcome(series, settings))
    passed = series.baseline_passed
    if passed.size and series.current_passed.size:
        rate = (float(passed.sum()) + 0.5) / (passed.size + 1)
        if passed.size >= settings.min_canary_baseline(rate):
            outcomes.append(_sprt_outcome(series, settings))
    return outcomes


def _cusum_outcome(series: Series, s: DetectionSettings) -> Outcome:
    ref = Reference.of(series.baseline_scores)
    mean, sd = ref.shifted(s.baseline_margin_se, s.min_sd)
    res = cusum_drop(series.current_scores, mean, sd, s.cusum_k, s.cusum_h, s.z_clip)
    current = float(np.mean(series.current_scores))
    return Outcome(
        series.key, "cusum", res.peak, ref.mean, current, ref.n, res.n, res.regression, s.cusum_h
    )


def _window_outcome(series: Series, s: DetectionSettings) -> Outcome:
    res = window_test(
        series.baseline_scores,
        series.current_scores,
        s.window_method,
        s.window_alpha,
        s.window_min_effect_sd,
        s.min_sd,
    )
    n_b, n_c = int(series.baseline_scores.size), int(series.current_scores.size)
    return Outcome(
        series.key,
        res.method,
        res.statistic,
        res.baseline_mean,
        res.current_mean,
        n_b,
        n_c,
        res.regression,
        s.window_alpha,
    )


def _sprt_outcome(series: Series, s: DetectionSettings) -> Outcome:
    passed, now = series.baseline_passed, series.current_passed
    n_base, base = int(passed.size), float(passed.mean())
    if series.itemised:
        item = canary_drop(series.baseline_items, passed, series.current_items, now, s)
        rate, hit = float(now.mean()), item.regression
        return Outcome(series.key, "sprt", item.peak, base, rate, n_base, item.n, hit, s.item_h)
    p0 = baseline_rate(passed, s.baseline_margin_se)
    res = sprt_drop(now, p0, s.sprt_delta, s.sprt_alpha, s.sprt_beta)
    upper, _ = sprt_bounds(s.sprt_alpha, s.sprt_beta)
    hit = res.regression
    return Outcome(series.key, "sprt", res.llr, base, res.rate, n_base, res.n, hit, upper)


def _shape_outcome(series: Series, s: DetectionSettings) -> Outcome:
    base, now = series.baseline_scores, series.current_scores
    d, p = shape_test(base, now)
    hit = p < s.shape_alpha and d >= s.shape_min_d
    b, c = float(np.median(base)), float(np.median(now))
    return Outcome(series.key, "ks", d, b, c, int(base.size), int(now.size), hit, s.shape_min_d)


# ---------------------------------------------------------------- store I/O


class _Part(NamedTuple):
    scores: FloatArray
    passed: BoolArray
    items: StrArray  # the item_id of each `passed` result


def build_series(
    baseline_rows: Sequence[Sequence[Any]], current_rows: Sequence[Sequence[Any]]
) -> list[Series]:
    """Group (model, deployment, probe, ts, score, passed, item_id) rows into series."""
    base, cur = _group(baseline_rows), _group(current_rows)
    empty = _Part(np.empty(0), np.empty(0, dtype=np.bool_), _no_items())
    series = []
    for key in sorted(set(base) | set(cur)):
        b, c = base.get(key, empty), cur.get(key, empty)
        series.append(Series(key, b.scores, b.passed, c.scores, c.passed, b.items, c.items))
    return series


def _group(rows: Sequence[Sequence[Any]]) -> dict[SeriesKey, _Part]:
    by_key: dict[SeriesKey, list[tuple[datetime, float, int | None, str]]] = {}
    for model, deployment, probe, ts, score, passed, item in rows:
        by_key.setdefault((model, deployment, probe), []).append((ts, score, passed, item))
    grouped: dict[SeriesKey, _Part] = {}
    for key, rows_of in by_key.items():
        rows_of.sort(key=lambda row: row[0])  # the query returns the most recent first
        canary = [(p, item) for _, _, p, item in rows_of if p is not None]
        grouped[key] = _Part(
            np.array([score for _, score, _, _ in rows_of], dtype=np.float64),
            np.array([bool(p) for p, _ in canary], dtype=np.bool_),
            np.array([item for _, item in canary], dtype=np.str_),
        )
    return grouped


async def load_series(
    store: Store, now: datetime, settings: DetectionSettings, deployment: str = ""
) -> list[Series]:
    """Read the baseline and current windows of every series from `fathom.quality`."""
    split = now - settings.window
    start = split - settings.baseline
    baseline = await store.query(
        detect_sql.QUALITY_ROWS,
        detect_sql.window_parameters(
            start, split, (start, now), deployment, settings.max_baseline_rows
        ),
    )
    current = await store.query(
        detect_sql.QUALITY_ROWS,
        detect_sql.window_parameters(
            split, now, (start, now), deployment, settings.max_current_rows
        ),
    )
    quality = await asyncio.to_thread(build_series, baseline, current)
    return quality + await load_shapes(store, now, settings, deployment)


async def load_shapes(
    store: Store, now: datetime, settings: DetectionSettings, deployment: str = ""
) -> list[Series]:
    """The answer lengths of each (model, deployment), baseline and current, as series."""
    split = now - settings.window
    start = split - settings.baseline
    rows = []
    for begin, end, most in ((start, split, settings.max_baseline_rows),
                             (split, now, settings.max_current_rows)):  # fmt: skip
        parameters = detect_sql.window_parameters(begin, end, (start, now), deployment, most)
        found = await store.query(detect_sql.ANSWER_LENGTHS, parameters)
        rows.append([(m, d, SHAPE, ts, tokens, None, "") for m, d, ts, tokens in found])
    shapes = await asyncio.to_thread(build_series, *rows)
    return [s for s in shapes if s.baseline_scores.size]


async def run_detection(
    store: Store,
    now: datetime,
    settings: DetectionSettings | None = None,
    *,
    deployment: str = "",
    write: bool = True,
) -> list[Outcome]:
    """Run every test on every series; write new regressions; return all outcomes."""
    settings = settings or DetectionSettings()
    series = await load_series(store, now, settings, deployment)
    # The statistics are numpy and scipy: off the loop, which a proxy may share.
    outcomes = await asyncio.to_thread(
        lambda: [outcome for one in series for outcome in evaluate(one, settings)]
    )
    if write:
        recorded = await recent_findings(store, now - settings.window, now)
        fresh = [o for o in outcomes if o.regression and (*o.key, o.test) not in recorded]
        if fresh:
            rows = [outcome.row(now) for outcome in fresh]
            await store.insert("fathom.regressions", REGRESSION_COLUMNS, rows)
    return outcomes


async def recent_findings(
    store: Store, since: datetime, until: datetime
) -> Mapping[tuple[str, ...], datetime]:
    """(model, deployment, probe, test) -> latest regression row in [since, until]."""
    parameters = detect_sql.findings_parameters(since, until)
    rows = await store.query(detect_sql.RECENT_FINDINGS, parameters)
    return {(m, d, p, t): ts for m, d, p, t, ts in rows}
