"""What a reference audit is asked and what it finds: its settings and prompts, one
`Comparison` per test, and the `AuditReport`, whose comparisons become `fathom.quality` rows
(probes audit-canary, audit-mmd, audit-logprob): score = the p-value (higher: less evidence of
a difference), passed = no divergence, item_id = 'vs:' + the reference's name, on the
candidate's (model, deployment). The comparisons themselves are in probes.audit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from probes.audit_client import Endpoint
from probes.result import QUALITY_COLUMNS, ProbeResult

if TYPE_CHECKING:
    from sidecar.store.client import Store

COMPARISONS = ("canary", "mmd", "logprob")
PROBES = {"canary": "audit-canary", "mmd": "audit-mmd", "logprob": "audit-logprob"}


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """How much an audit asks and how it decides (integration: `audit_*` settings later)."""

    k: int = 5  # answers per prompt from the candidate (2k from the reference: the floor)
    alpha: float = 0.01
    temperature: float = 0.7  # of the answers the MMD compares
    max_tokens: int = 64
    canary_max_tokens: int = 128
    logprob_temperature: float = 1.0  # sampled at 1: the gap estimates the symmetrised KL
    logprob_pairs: int = 2  # answer pairs per prompt: the sign-flip test's p is >= 2^-pairs
    template: str = "{prompt}\n"  # how a prompt is sent as text for the logprob comparison
    top_logprobs: int = 5
    min_gap: float = 0.01  # nats per token: a smaller logprob gap is noise, whatever its p
    permutations: int = 2000
    seed: int = 0
    concurrency: int = 2  # requests in flight per side
    read_timeout_s: float = 300.0
    comparisons: tuple[str, ...] = COMPARISONS

    def as_text(self, prompt: str) -> str:
        """A prompt as the text the logprob comparison sends (`template`, {prompt} filled)."""
        return self.template.replace("{prompt}", prompt)


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
