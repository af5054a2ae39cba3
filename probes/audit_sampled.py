"""Which production prompts the mirrored audit asks again: new user samples of the audited
deployments, those that can be re-asked exactly, drawn at the audit rate.

A stored prompt that lost part of itself to the cap or to redaction asks another question, so
it is never mirrored (sidecar.wire marks it); nor is a request with no prompt text. Each is
counted by reason. Samples are read by time with an overlap (a long request's row can land
after a shorter, later one's) and remembered by request id, so none is drawn twice.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC

from probes.audit_prompts import stored_prompt
from probes.audit_report import AuditPrompt
from probes.audit_sql import SAMPLED_SINCE
from sidecar.store.client import Store
from sidecar.wire import is_redacted, is_truncated

OVERLAP_S = 60.0  # re-read this much before the newest sample seen: rows stored out of order
RECENT_IDS = 10_000  # request ids remembered as seen (the overlap reads them again)
READ_LIMIT = 1000  # samples read per look


@dataclass(slots=True)
class Audited:
    """One audited deployment: its reference, and the prompts mirrored for its next audit."""

    model: str
    deployment: str
    reference: str  # the reference's deployment name
    prompts: list[AuditPrompt] = field(default_factory=list)


@dataclass(slots=True)
class SampledStats:
    """What the collector saw."""

    seen: int = 0  # samples of audited deployments read
    mirrored: int = 0  # drawn into an audit
    skipped: Counter[str] = field(default_factory=Counter)  # not mirrorable, by reason


def skip_reason(request_json: str, route: str) -> str:
    """'' when the stored request can be mirrored as asked, else why not."""
    if is_truncated(request_json):
        return "truncated"
    if is_redacted(request_json):
        return "redacted"
    return "" if stored_prompt(request_json, route) is not None else "not_a_prompt"


class SampledPrompts:
    """Reads new samples and fills each audited deployment's prompts, up to `wanted`."""

    def __init__(
        self,
        store: Store,
        audited: Sequence[Audited],
        rate: float,
        wanted: int,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.store, self.rate, self.wanted, self._rng = store, rate, wanted, rng
        self.audited = {(a.model, a.deployment): a for a in audited}
        self.stats = SampledStats()
        self._newest = clock()  # prompts sampled before the audit started are not mirrored
        self._seen: OrderedDict[str, None] = OrderedDict()

    async def collect(self) -> None:
        """Read the samples stored since the last look; draw the mirrorable ones at `rate`."""
        since_ms = round((self._newest - OVERLAP_S) * 1000)
        rows = await self.store.query(SAMPLED_SINCE, {"since_ms": since_ms, "limit": READ_LIMIT})
        for request_id, ts, model, deployment, route, request_json in rows:
            when = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()
            self._newest = max(self._newest, when)
            audited = self.audited.get((str(model), str(deployment)))
            if audited is None or request_id in self._seen:
                continue
            self._remember(str(request_id))
            self.stats.seen += 1
            why = skip_reason(str(request_json), str(route))
            if why:
                self.stats.skipped[why] += 1
                continue
            if len(audited.prompts) < self.wanted and self._rng.random() < self.rate:
                prompt = stored_prompt(str(request_json), str(route))
                assert prompt is not None  # skip_reason said it is one
                audited.prompts.append(prompt)
                self.stats.mirrored += 1

    def _remember(self, request_id: str) -> None:
        self._seen[request_id] = None
        if len(self._seen) > RECENT_IDS:
            self._seen.popitem(last=False)
