"""The reference audit's SQL; parameters are bound, never formatted."""

from __future__ import annotations

# The newest sampled user requests of a model (one per distinct request body), as prompts to
# mirror: `fathom audit --store`.
RECENT_PROMPTS = """
SELECT request_json, any(route) AS asked_as, max(ts) AS last
FROM fathom.samples
WHERE route IN ('chat', 'completion')
  AND ({model:String} = '' OR model = {model:String})
GROUP BY request_json
ORDER BY last DESC
LIMIT {limit:UInt32}
"""

# Sampled user requests stored since a time, oldest first: the mirrored audit inside `fathom
# serve` (probes.audit_mirror) picks those of the audited deployments. Times as epoch ms.
SAMPLED_SINCE = """
SELECT request_id, ts, model, deployment, route, request_json
FROM fathom.samples
WHERE ts > fromUnixTimestamp64Milli({since_ms:Int64})
  AND route IN ('chat', 'completion')
  AND origin = 'user'
ORDER BY ts, request_id
LIMIT {limit:UInt32}
"""
