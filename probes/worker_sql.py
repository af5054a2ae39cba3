"""The probe worker's SQL; parameters are bound, never formatted.

Times travel as epoch milliseconds (Int64) so that no server timezone can shift them. The
subqueries use GLOBAL IN: on a cluster both sides are Distributed tables, and a plain IN
would be refused (or run per shard against partial data).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from probes.detect_sql import epoch_ms

# This worker's oldest samples without a degeneration row: every scored sample has one, and
# all of a sample's rows are written in one insert, so "has one" means "fully scored".
# Quality rows carry their sample's ts, so the anti-join reads the same window.
UNSCORED_SAMPLES = """
SELECT ts, request_id, model, deployment, route, finish_reason, request_json, response_text
FROM fathom.samples
WHERE ts >= fromUnixTimestamp64Milli({since_ms:Int64})
  AND route IN ('chat', 'completion', 'responses', 'messages')
  AND cityHash64(request_id) % {worker_count:UInt32} = {worker_index:UInt32}
  AND request_id GLOBAL NOT IN (
      SELECT request_id
      FROM fathom.quality
      WHERE ts >= fromUnixTimestamp64Milli({since_ms:Int64})
        AND probe = 'degeneration'
        AND request_id != ''
  )
ORDER BY ts, request_id
LIMIT {batch:UInt32}
"""

# The (model, deployment) pairs this worker sends canaries to: those users asked in the window,
# and those the routes configure (known from the start, so a deployment has a canary baseline
# before its first user request).
CANARY_TARGETS = """
SELECT model, deployment
FROM (
    SELECT model, deployment
    FROM fathom.requests
    WHERE ts >= fromUnixTimestamp64Milli({since_ms:Int64})
      AND origin = 'user'
      AND route IN ('chat', 'completion', 'responses', 'messages')
      AND model != ''
      AND status > 0 AND status < 400
    UNION ALL
    SELECT pair.1 AS model, pair.2 AS deployment
    FROM (SELECT arrayJoin({routed:Array(Tuple(String, String))}) AS pair)
)
WHERE cityHash64(model, deployment) % {worker_count:UInt32} = {worker_index:UInt32}
GROUP BY model, deployment
ORDER BY model, deployment
"""


def unscored_parameters(
    since: datetime, worker_index: int, worker_count: int, batch: int
) -> dict[str, Any]:
    """Parameters of UNSCORED_SAMPLES."""
    return {
        "since_ms": epoch_ms(since),
        "worker_index": worker_index,
        "worker_count": worker_count,
        "batch": batch,
    }


def targets_parameters(
    since: datetime,
    worker_index: int,
    worker_count: int,
    routed: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Parameters of CANARY_TARGETS (`routed`: the configured (model, deployment) pairs)."""
    return {
        "since_ms": epoch_ms(since),
        "worker_index": worker_index,
        "worker_count": worker_count,
        "routed": [tuple(pair) for pair in routed],
    }
