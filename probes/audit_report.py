"""What a reference audit is asked and what it finds: its prompts (its settings are in
probes.audit_settings, re-exported here), one `Comparison` per test, and the `AuditReport`,
whose comparisons become `fathom.quality` rows (probes audit-canary, audit-mmd,
audit-logprob): score = the p-value (higher: less evidence of a difference), passed = no
divergence, item_id = 'vs:' + the reference's name, on the candidate's (model, deployment).
The comparisons themselves are in probes.audit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from probes.audit_client import Endpoint
from probes.audit_settings import COMPARISONS as COMPARISONS
from probes.audit_settings import AuditSettings as AuditSettings
from probes.result import QUALITY_COLUMNS, ProbeResult

if TYPE_CHECKING:
    from sidecar.store.client import Store

PROBES = {"canary": "audit-canary", "mmd": "audit-mmd", "logprob": "audit-logprob"}


@dataclass(frozen=True, slots=True)
class AuditPrompt:
    """A mirrored prompt: its chat messages, and its text for the logprob comparison."""

    id: str
    text: str
    messages: tuple[Mapping[str, Any], ...]

    @classmethod
    def of(cls, item_id: str, text: str) -> AuditPrompt:
        """A single-turn chat prompt."""
        return cls(item_id, text, ({"role": "user", "content": text},))


@dataclass(frozen=True, slots=True)
class Comparison:
    """One comparison's outcome: its statistic, p-value and verdict, or why it did not run."""

    probe: str
    verdict: str  # 'diverges' | 'same' | 'inconclusive' | 'not run'
    statistic: float = float("nan")
    p_value: float = float("nan")
    n: int = 0  # prompts (or canaries) compared
    summary: str = ""  # the figures, in one line
    scorer: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ran(self) -> bool:
        """Whether it compared anything."""
        return self.verdict != "not run"

    @property
    def diverges(self) -> bool:
        """Whether the candidate differs from the reference beyond the floor, at alpha."""
        return self.verdict == "diverges"

    def result(self, reference: str) -> ProbeResult:
        """As a probe result against the reference named: score = p-value."""
        detail = {"verdict": self.verdict, "statistic": self.statistic, "p_value": self.p_value,
                  "n": self.n, "reference": reference, **self.detail}  # fmt: skip
        # JSON has no NaN: a figure that could not be measured is null.
        detail = {k: None if isinstance(v, float) and not math.isfinite(v) else v
                  for k, v in detail.items()}  # fmt: skip
        score = min(1.0, max(0.0, self.p_value))
        item = f"vs:{reference}"
        return ProbeResult(self.probe, item, score, not self.diverges, detail, self.scorer)


def not_run(name: str, reason: str) -> Comparison:
    """A comparison that could not run, and why."""
    return Comparison(PROBES[name], "not run", summary=reason)


@dataclass(frozen=True, slots=True)
class AuditReport:
    """What an audit of a candidate against a reference found."""

    reference: Endpoint
    candidate: Endpoint
    alpha: float
    comparisons: tuple[Comparison, ...]

    @property
    def diverges(self) -> bool:
        """Whether any comparison that ran found the candidate different."""
        return any(c.diverges for c in self.comparisons)

    def quality_rows(self, ts: datetime) -> list[dict[str, Any]]:
        """`fathom.quality` rows of the comparisons that ran, on the candidate's deployment."""
        cand = self.candidate
        return [
            c.result(self.reference.name).to_row(ts, "", cand.model, cand.name)
            for c in self.comparisons
            if c.ran
        ]


async def write_results(store: Store, report: AuditReport, ts: datetime) -> int:
    """Insert the report's rows into fathom.quality; how many."""
    rows = report.quality_rows(ts)
    if rows:
        values = [[row[c] for c in QUALITY_COLUMNS] for row in rows]
        await store.insert("fathom.quality", QUALITY_COLUMNS, values)
    return len(rows)
