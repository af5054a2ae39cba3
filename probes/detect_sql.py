"""The SQL regression detection and `fathom check` run; parameters are bound, never formatted.

Times travel as epoch milliseconds (Int64) so that no server timezone can shift them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

# The most recent `max_rows` quality rows of each series in [start, end), audits left out
# (their rows are verdicts of a test already, read by AUDITS); canary rows bring
# their golden item (`item_id`) for the per-item test. Per item (samples share item_id ''), only
# the rows of the scorer that scored it last in [span_start, span_end): scores of another scorer
# version are another scale. Per item, not per series: one factuality series mixes canary kinds
# (numeric, text, contains, ...), each with a scorer of its own, and every kind counts.
# GLOBAL IN: on a cluster fathom.quality is Distributed, and a plain IN on it in a query on it
# is a double-distributed subquery, which servers refuse by default.
QUALITY_ROWS = """
SELECT model, deployment, probe, ts, toFloat64(score) AS score, passed, item_id
FROM fathom.quality
WHERE ts >= fromUnixTimestamp64Milli({start_ms:Int64})
  AND ts < fromUnixTimestamp64Milli({end_ms:Int64})
  AND ({deployment:String} = '' OR deployment = {deployment:String})
  AND isFinite(score)
  AND NOT startsWith(probe, 'audit-')
  AND (model, deployment, probe, item_id, scorer) GLOBAL IN (
    SELECT model, deployment, probe, item_id, argMax(scorer, ts)
    FROM fathom.quality
    WHERE ts >= fromUnixTimestamp64Milli({span_start_ms:Int64})
      AND ts < fromUnixTimestamp64Milli({span_end_ms:Int64})
    GROUP BY model, deployment, probe, item_id
  )
ORDER BY model, deployment, probe, ts DESC
LIMIT {max_rows:UInt32} BY model, deployment, probe
"""

# Answer lengths (output tokens) of the most recent `max_rows` user answers of each (model,
# deployment) in [start, end), for the answer-shape test; failed requests have no shape.
ANSWER_LENGTHS = """
SELECT model, deployment, ts, toFloat64(output_tokens) AS tokens
FROM fathom.requests
WHERE ts >= fromUnixTimestamp64Milli({start_ms:Int64})
  AND ts < fromUnixTimestamp64Milli({end_ms:Int64})
  AND ({deployment:String} = '' OR deployment = {deployment:String})
  AND origin = 'user'
  AND route IN ('chat', 'completion', 'responses', 'messages')
  AND error = '' AND status < 400
ORDER BY model, deployment, ts DESC
LIMIT {max_rows:UInt32} BY model, deployment
"""

# The latest recorded finding per (model, deployment, probe, test) in [since, until].
RECENT_FINDINGS = """
SELECT model, deployment, probe, test, max(ts) AS latest
FROM fathom.regressions
WHERE ts >= fromUnixTimestamp64Milli({since_ms:Int64})
  AND ts <= fromUnixTimestamp64Milli({until_ms:Int64})
GROUP BY model, deployment, probe, test
"""

# Recorded findings in [since, until], for `fathom check`.
FINDINGS = """
SELECT ts, model, deployment, probe, test, statistic, baseline, current, n_baseline, n_current
FROM fathom.regressions
WHERE ts >= fromUnixTimestamp64Milli({since_ms:Int64})
  AND ts <= fromUnixTimestamp64Milli({until_ms:Int64})
  AND ({deployment:String} = '' OR deployment = {deployment:String})
ORDER BY ts
"""


def epoch_ms(when: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime."""
    if when.tzinfo is None:
        raise ValueError(f"naive datetime {when!r}: pass an aware (UTC) time")
    return round(when.timestamp() * 1000)


def window_parameters(
    start: datetime, end: datetime, span: tuple[datetime, datetime], deployment: str, max_rows: int
) -> dict[str, Any]:
    """Parameters of QUALITY_ROWS: the window [start, end) of the whole span read."""
    return {
        "start_ms": epoch_ms(start),
        "end_ms": epoch_ms(end),
        "span_start_ms": epoch_ms(span[0]),
        "span_end_ms": epoch_ms(span[1]),
        "deployment": deployment,
        "max_rows": max_rows,
    }


# The latest reference-audit verdict per (model, deployment, probe, reference) in
# [since, until]: score is the comparison's p-value, passed = 0 when the candidate diverged.
AUDITS = """
SELECT model, deployment, probe, item_id, count() AS audits,
       argMax(toFloat64(score), ts) AS p_value, argMax(passed, ts) AS passed
FROM fathom.quality
WHERE ts >= fromUnixTimestamp64Milli({since_ms:Int64})
  AND ts <= fromUnixTimestamp64Milli({until_ms:Int64})
  AND ({deployment:String} = '' OR deployment = {deployment:String})
  AND startsWith(probe, 'audit-')
GROUP BY model, deployment, probe, item_id
"""


def findings_parameters(since: datetime, until: datetime, deployment: str = "") -> dict[str, Any]:
    """Parameters of RECENT_FINDINGS, FINDINGS and AUDITS."""
    return {"since_ms": epoch_ms(since), "until_ms": epoch_ms(until), "deployment": deployment}
