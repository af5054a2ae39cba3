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
