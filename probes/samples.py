"""Sample scoring, one part of the probe worker: this worker's unscored samples, degeneration
and abstention on every one, consistency (k re-asks, deployment pinned) when the budget allows.

All quality rows of one sample go into the store in ONE insert, so a sample is either fully
scored or not at all and a crash never scores one twice; worker i of N only reads samples whose
cityHash64(request_id) % N == i, so N workers never score one twice either.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from probes import worker_sql
from probes.answer_kind import abstention, classify, of_kind
from probes.budget import TokenBucket
from probes.consistency import Reasked, non_answer, reask, score_consistency
from probes.degeneration import score_degeneration
from probes.probe_settings import ProbeSettings
from probes.result import QUALITY_COLUMNS, ProbeResult
from probes.scorer import Scorer
from probes.traffic import ProbeTraffic
from probes.worker_stats import WorkerStats
from sidecar.store.client import RowsRejected, Store
from sidecar.wire import is_redacted, is_truncated, prompt_text

log = logging.getLogger("fathom.probe")
RECENT_IDS = 10_000  # request ids remembered as scored (see SampleScoring._recent)


@dataclass(frozen=True, slots=True)
class Sample:
    """One `fathom.samples` row, as UNSCORED_SAMPLES selects it."""

    ts: datetime
    request_id: str
    model: str
    deployment: str
    route: str
    finish_reason: str
    request_json: str
    response_text: str

    @classmethod
    def of(cls, row: Sequence[Any]) -> Sample:
        """From a result row; the store returns UTC times without a zone."""
        ts = row[0] if row[0].tzinfo else row[0].replace(tzinfo=UTC)
        return cls(ts, *(str(v) for v in row[1:8]))


@dataclass(frozen=True, slots=True)
class Scored:
    """A sample's probe results, why consistency is missing ('' when it is not), and whether
    the upstream was overloaded while re-asking."""

    results: tuple[ProbeResult, ...]
    skipped: str = ""
    overloaded: bool = False


def reaskable(sample: Sample) -> tuple[dict[str, Any] | None, str]:
    """(the original request, '') when the sample can be re-asked, else (None, why not).

    Re-asks send exactly the prompt that produced the answer: a stored request that lost
    part of itself to the cap or to redaction asks another question, so it is not re-asked."""
    if is_truncated(sample.request_json):
        return None, "truncated"
    if is_redacted(sample.request_json):
        return None, "redacted"
    try:
        request = json.loads(sample.request_json)
    except ValueError:
        return None, "not_json"
    if not isinstance(request, dict) or not request.get("model"):
        return None, "not_json"
    return request, ""


def cheap_probes(sample: Sample, prompt: str) -> tuple[tuple[ProbeResult, ...], bool]:
    """(degeneration and abstention results, whether the answer is informative): the probes
    that need no model and no re-ask."""
    degeneration = score_degeneration(sample.response_text, sample.finish_reason, prompt=prompt)
    kind = classify(sample.response_text, prompt)
    useful = of_kind(kind, degeneration.detail.get("flags", []))
    return (degeneration, abstention(kind)), useful


def estimate_tokens(request: Mapping[str, Any], sample: Sample) -> int:
    """Tokens one re-ask may use: ~4 characters a token for the request and the answer,
    the answer bounded by the request's max_tokens. Settled against usage afterwards."""
    answer = len(sample.response_text) // 4 + 16
    limit = (
        request.get("max_tokens")
        or request.get("max_completion_tokens")
        or request.get("max_output_tokens")  # responses
    )
    if isinstance(limit, int) and limit > 0:
        answer = min(answer, limit)
    return len(sample.request_json) // 4 + answer


def settle(bucket: TokenBucket, estimated: int, replies: Reasked) -> None:
    """Give back (or take) the difference between estimated and reported tokens."""
    answered = [r for r in replies.replies if not r.error]
    if any(r.tokens is None for r in answered):
        return  # no usage reported: the estimate stands
    bucket.level = min(bucket.rate_per_min, bucket.level + estimated - replies.tokens)


def overloaded(error: str) -> bool:
    """Whether a probe request's error class means the upstream needs a rest."""
    return error in ("timeout", "connect", "http", "http_429") or error.startswith("http_5")


class SampleScoring:
    """Scores batches of this worker's unscored samples and writes their quality rows."""

    def __init__(
        self,
        store: Store,
        traffic: ProbeTraffic,
        scorer: Scorer,
        settings: ProbeSettings,
        stats: WorkerStats,
        clock: Callable[[], float],
        name: str,
    ) -> None:
        self.store, self.traffic, self.settings, self.stats = store, traffic, settings, stats
        self._scorer, self._clock, self._name = scorer, clock, name
        # Ids scored lately: a store that shows inserts late (a cluster's Distributed tables
        # forward asynchronously) must not hand this worker the same sample twice.
        self._recent: OrderedDict[str, None] = OrderedDict()

    async def score_batch(self, stop: asyncio.Event) -> bool:
        """Score one batch of this worker's unscored samples; True when the batch was full."""
        s = self.settings
        since = datetime.fromtimestamp(self._clock(), UTC) - timedelta(seconds=s.lookback_s)
        parameters = worker_sql.unscored_parameters(since, s.worker_index, s.worker_count, s.batch)
        rows = await self.store.query(worker_sql.UNSCORED_SAMPLES, parameters)
        samples = [Sample.of(row) for row in rows if row[1] not in self._recent]
        for start in range(0, len(samples), s.concurrency):
            if stop.is_set():
                return False
            chunk = samples[start : start + s.concurrency]
            outcomes = await asyncio.gather(
                *(self.score(sample) for sample in chunk), return_exceptions=True
            )
            scored = [(a, b) for a, b in zip(chunk, outcomes, strict=True) if isinstance(b, Scored)]
            for sample, outcome in scored:  # what did score is kept; the rest is retried later
                await self._write(sample, outcome)
            failed = [b for b in outcomes if not isinstance(b, Scored)]
            if failed:
                raise failed[0]
            if any(outcome.overloaded for _, outcome in scored):
                self.traffic.rest()
                return False
        return len(rows) == s.batch and len(samples) > 0

    async def score(self, sample: Sample) -> Scored:
        """Every probe of one sample (nothing written)."""
        request, why_not = reaskable(sample)
        chat = sample.route != "completion"  # chat, responses, messages: a conversation
        prompt = prompt_text(request, chat) if request is not None else ""
        # Tens of ms on a long answer: off the loop, which the proxy may share (serve --probes).
        cheap, useful = await asyncio.to_thread(cheap_probes, sample, prompt)
        if request is None:
            return Scored(cheap, why_not)
        k = self.settings.k
        if not useful:  # nothing to agree with: consistency 0, no re-ask
            return Scored((*cheap, non_answer("", self._scorer.name, k)))
        estimate = k * estimate_tokens(request, sample)
        if not self.traffic.budget.try_spend(k, estimate):
            return Scored(cheap, "budget")
        replies, busy = await self._reask(sample, request, estimate)
        try:
            consistency = await score_consistency(
                self._scorer, sample.response_text, replies.answers, prompt=prompt,
                tokens=replies.tokens, errors=replies.errors,
            )  # fmt: skip
        except ValueError as exc:  # bad data in this one sample: never retry it forever
            log.warning("%s: consistency of %s failed: %s", self._name, sample.request_id, exc)
            return Scored(cheap, "scoring_error", busy)
        if consistency is None:
            return Scored(cheap, "reask_failed", busy)
        return Scored((*cheap, consistency), "", busy)

    async def _reask(
        self, sample: Sample, request: dict[str, Any], estimate: int
    ) -> tuple[Reasked, bool]:
        """k re-asks pinned to the sample's deployment; (replies, upstream overloaded)."""
        k, traffic = self.settings.k, self.traffic
        started = time.monotonic()
        self.stats.reasking += 1
        try:
            replies = await reask(
                traffic.session, traffic.url(sample.route), request, k=k,
                deployment=sample.deployment, headers=traffic.headers,
                read_timeout_s=traffic.timeout_s,
            )  # fmt: skip
        finally:
            self.stats.reasking -= 1
        slow = time.monotonic() - started > self.settings.slow_s
        self.stats.probe_requests += k
        settle(traffic.budget.tokens, estimate, replies)
        return replies, slow or any(overloaded(e) for e in replies.errors)

    async def _write(self, sample: Sample, outcome: Scored) -> None:
        """All of one sample's rows in one insert: it is scored completely or not at all."""
        rows = [
            result.to_row(sample.ts, sample.request_id, sample.model, sample.deployment)
            for result in outcome.results
        ]
        values = [[row[c] for c in QUALITY_COLUMNS] for row in rows]
        # The token makes a repeated insert for the same sample a no-op in the store too.
        token = f"fathom-quality:{sample.request_id}"
        try:
            await self.store.insert("fathom.quality", QUALITY_COLUMNS, values, token=token)
        except RowsRejected as exc:  # never retried: samples go oldest first, it would block
            self.stats.errors += 1
            log.error("%s: sample %s left unscored: %s", self._name, sample.request_id, exc)
            self._recent[sample.request_id] = None
            return
        self._recent[sample.request_id] = None
        while len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)
        self.stats.samples_scored += 1
        if outcome.skipped == "budget":
            self.stats.skipped_budget += 1
        elif outcome.skipped:
            self.stats.skipped[outcome.skipped] += 1
        else:
            self.stats.consistency_scored += 1
