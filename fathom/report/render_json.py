"""The JSON form of a report, for CI jobs and chat webhooks: a documented, stable structure.

Schema "fathom.report/1". Times are ISO 8601 UTC strings; a figure that was not measured
(fewer samples than `settings.min_samples`) is null. New keys may be added; existing keys keep
their name and meaning within a schema version.

    {
      "schema": "fathom.report/1",
      "generated_at": "2025-01-08T12:00:00+00:00",
      "window": {"start", "end", "previous_start", "seconds"},   # period [start, end);
                                       # week over week compares it with [previous_start, start)
      "settings": {"min_samples", "confidence", "canary_min_results", "canary_limit",
                   "min_speedup", "tenant"},   # tenant: null = every tenant's traffic
      "has_data": true,                # false: the store holds nothing for the period
      "deployments": [{
        "model", "deployment",
        "speed": {                     # user traffic only (origin = 'user')
          "requests", "errors", "previous_requests", "previous_errors",
          "metrics": [{                # ttft_ms, ttfa_ms, itl_ms (mean ITL per request), decode_tps
            "name", "label", "unit", "better": "lower"|"higher",
            "n", "n_previous",         # requests with this figure, per period
            "percentiles": [{"p": 50, "current", "previous", "change_pct"}, ...]
          }]                           # latencies: p50, p90, p99; tokens/s: p50, p10, p1
        },
        "quality": [{
          "probe",
          "current":  {"n", "mean", "sd", "low", "high"},   # mean score, normal CI
          "previous": {"n", "mean", "sd", "low", "high"},
          "change",                    # current.mean - previous.mean
          "significant",               # |two-sample z| >= the confidence level's z
          "pass_rate":          {"n", "passed", "rate", "low", "high"} | null,  # Wilson CI
          "previous_pass_rate": {"n", "passed", "rate", "low", "high"} | null
        }]
      }],
      "pareto": [{"probe", "points": [{"model", "deployment", "tokens_per_s", "quality",
                  "low", "high", "on_front", "previous_tokens_per_s", "previous_quality"}]}],
      "regressions": [{"ts", "model", "deployment", "probe", "test", "statistic",
                       "baseline", "current", "n_baseline", "n_current"}],   # newest first
      "canary_drops": [{"model", "deployment", "probe", "item_id", "rate", "n",
                        "previous_rate", "n_previous", "change", "latest_detail"}],
      "not_measured": [{"kind": "speed"|"quality"|"pass_rate", "model", "deployment",
                        "series", "n", "n_previous", "needed",
                        "missing": "figures"|"change"}],
      "verdicts": [{"model", "degraded", "reference", "speedup",
                    "worse_on": [{"probe", "score", "reference_score"}]}],
      "not_reasked": [{"model", "deployment", "samples", "redacted"}],
      "audits": [{"model", "deployment", "reference", "comparison": "canary"|"mmd"|"logprob",
                  "audits", "latest", "p_value",      # latest: that of the latest audit
                  "verdict": "diverged"|"same"}]     # a deployment absent: not audited
    }

Reference-audit rows (probes audit-*) score a p-value: they are in "audits", never in
"quality", "pareto" or "canary_drops".
"""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import datetime
from typing import Any

from fathom.report.model import Report

SCHEMA = "fathom.report/1"


def to_dict(report: Report) -> dict[str, Any]:
    """The report as plain JSON-ready values, in the documented structure."""
    plain = _plain(dataclasses.asdict(report))
    window = plain["window"]
    window["seconds"] = report.window.span.total_seconds()
    return {"schema": SCHEMA, **plain}


def render_json(report: Report) -> str:
    """The report as indented JSON text."""
    return json.dumps(to_dict(report), indent=2, allow_nan=False) + "\n"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN or infinity
    return value
