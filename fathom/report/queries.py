"""The SQL `fathom report` runs; parameters are bound, never formatted in.

Times travel as epoch milliseconds (Int64), as in probes/detect_sql.py, so that no server
timezone can shift them. Every query reads [previous_start, end) and splits it at `split_ms`
(the start of the reported period) into the previous and the current period.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fathom.report.model import Window
from probes.detect_sql import epoch_ms
from sidecar.wire import REDACTION_MARK

TABLES = ("requests", "samples", "quality", "regressions")

# Which tables of database `fathom` exist.
EXISTING_TABLES = """
SELECT name FROM system.tables WHERE database = 'fathom'
"""


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A per-request speed column and the percentiles the report gives of it."""

    name: str
    column: str
    label: str
    unit: str
    better: str
    levels: tuple[float, ...]  # quantile levels; the first is the median
    # Measured only since a later migration: no figure at all in either period is not a gap.
    optional: bool = False


# Tokens/s gets its slow tail (p10, p1); latencies their slow tail (p90, p99).
SPEED_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("ttft_ms", "ttft_ms", "TTFT", "ms", "lower", (0.5, 0.9, 0.99)),
    # Time to first answer token (after any reasoning): what a reasoning model's users wait for.
    MetricSpec(
        "ttfa_ms",
        "ttfa_ms",
        "time to first answer token",
        "ms",
        "lower",
        (0.5, 0.9, 0.99),
        optional=True,
    ),
    MetricSpec("itl_ms", "itl_mean_ms", "ITL (mean per request)", "ms", "lower", (0.5, 0.9, 0.99)),
    MetricSpec("decode_tps", "decode_tps", "decode tokens/s", "tok/s", "higher", (0.5, 0.1, 0.01)),
)


def _speed_sql() -> str:
    # Built from SPEED_METRICS (constants, not input): quantile levels must be literals.
    # Exact quantiles, so figures match any other exact query; their memory grows with the
    # requests in the period (4 bytes each per metric), which a weekly report can afford.
    figures = ",\n  ".join(
        f"count({m.column}) AS n_{m.name},\n"
        f"  quantilesExact({', '.join(map(str, m.levels))})({m.column}) AS q_{m.name}"
        for m in SPEED_METRICS
    )
    return f"""
SELECT model, deployment, ts >= fromUnixTimestamp64Milli({{split_ms:Int64}}) AS current,
  count() AS requests,
  countIf(error != '') AS errors,
  {figures}
FROM fathom.requests
WHERE ts >= fromUnixTimestamp64Milli({{start_ms:Int64}})
  AND ts < fromUnixTimestamp64Milli({{end_ms:Int64}})
  AND origin = 'user'
  AND ({{all_tenants:UInt8}} OR tenant = {{tenant:String}})
GROUP BY model, deployment, current
ORDER BY model, deployment, current
"""


# Per (model, deployment, current): requests, errors, then n_<metric>, q_<metric> for each of
# SPEED_METRICS. User traffic only: probe and canary requests are not what users wait for.
SPEED = _speed_sql()

# Per (model, deployment, probe, current): score count, mean, sd and pass/fail counts.
# Reference audits (probes audit-*) score a p-value, not quality: AUDITS reads them instead.
QUALITY = """
SELECT model, deployment, probe, ts >= fromUnixTimestamp64Milli({split_ms:Int64}) AS current,
  count() AS n,
  avg(score) AS mean,
  stddevSamp(score) AS sd,
  count(passed) AS n_pass_fail,
  countIf(passed = 1) AS n_passed
FROM fathom.quality
WHERE ts >= fromUnixTimestamp64Milli({start_ms:Int64})
  AND ts < fromUnixTimestamp64Milli({end_ms:Int64})
  AND isFinite(score)
  AND NOT startsWith(probe, 'audit-')
GROUP BY model, deployment, probe, current
ORDER BY model, deployment, probe, current
"""

# Canary items (pass/fail results with an item id) whose pass rate fell most.
CANARY_DROPS = """
SELECT model, deployment, probe, item_id,
  avgIf(assumeNotNull(passed), ts >= fromUnixTimestamp64Milli({split_ms:Int64})) AS rate,
  countIf(ts >= fromUnixTimestamp64Milli({split_ms:Int64})) AS n,
  avgIf(assumeNotNull(passed), ts < fromUnixTimestamp64Milli({split_ms:Int64})) AS previous_rate,
  countIf(ts < fromUnixTimestamp64Milli({split_ms:Int64})) AS n_previous,
  argMaxIf(detail, ts, ts >= fromUnixTimestamp64Milli({split_ms:Int64})) AS latest_detail
FROM fathom.quality
WHERE ts >= fromUnixTimestamp64Milli({start_ms:Int64})
  AND ts < fromUnixTimestamp64Milli({end_ms:Int64})
  AND passed IS NOT NULL AND item_id != ''
  AND NOT startsWith(probe, 'audit-')
GROUP BY model, deployment, probe, item_id
HAVING n >= {min_results:UInt32} AND n_previous >= {min_results:UInt32} AND rate < previous_rate
ORDER BY rate - previous_rate, n DESC, model, deployment, probe, item_id
LIMIT {limit:UInt32}
"""


# Reference audits in the period (`fathom audit --record`: probes audit-<comparison>, item_id
# 'vs:<reference>'), per (model, deployment, reference, comparison): how many, and the latest
# one's time, p-value (its score) and verdict (passed = 1: no divergence).
AUDITS = """
SELECT model, deployment, substring(item_id, 4) AS reference, substring(probe, 7) AS comparison,
  count() AS audits,
  toUnixTimestamp64Milli(max(ts)) AS latest_ms,
  argMax(toFloat64(score), ts) AS p_value,
  argMax(passed, ts) AS passed
FROM fathom.quality
WHERE ts >= fromUnixTimestamp64Milli({split_ms:Int64})
  AND ts < fromUnixTimestamp64Milli({end_ms:Int64})
  AND startsWith(probe, 'audit-') AND startsWith(item_id, 'vs:')
GROUP BY model, deployment, reference, comparison
ORDER BY model, deployment, reference, comparison
"""

# Per (model, deployment): samples stored in the period, and those whose stored request lost
# part of itself to redaction: the consistency probe does not re-ask those (it needs the exact
# prompt), so they count here rather than silently.
NOT_REASKED = """
SELECT model, deployment, count() AS samples,
  countIf(position(request_json, {mark:String}) > 0) AS redacted
FROM fathom.samples
WHERE ts >= fromUnixTimestamp64Milli({split_ms:Int64})
  AND ts < fromUnixTimestamp64Milli({end_ms:Int64})
GROUP BY model, deployment
HAVING redacted > 0
ORDER BY model, deployment
"""


def window_parameters(window: Window) -> dict[str, Any]:
    """Parameters of QUALITY and AUDITS (and, with `speed_parameters`, SPEED)."""
    return {
        "start_ms": epoch_ms(window.previous_start),
        "split_ms": epoch_ms(window.start),
        "end_ms": epoch_ms(window.end),
    }


def speed_parameters(window: Window, tenant: str | None) -> dict[str, Any]:
    """Parameters of SPEED: the window, and one tenant's traffic or (None) every tenant's."""
    return {**window_parameters(window), "all_tenants": int(tenant is None), "tenant": tenant or ""}


def not_reasked_parameters(window: Window) -> dict[str, Any]:
    """Parameters of NOT_REASKED."""
    return {**window_parameters(window), "mark": REDACTION_MARK}


def canary_parameters(window: Window, min_results: int, limit: int) -> dict[str, Any]:
    """Parameters of CANARY_DROPS."""
    return {**window_parameters(window), "min_results": min_results, "limit": limit}
