"""The probe worker: scores sampled answers, sends canaries, runs regression detection.

One loop per worker. Each round it (1) runs detection when due (worker 0 only), (2) sends a
rotating subset of canaries to each (model, deployment) users asked lately that hashes to this
worker, and (3) scores one batch of this worker's unscored samples: degeneration on every one,
consistency (k re-asks, deployment pinned) when the budget allows. All quality rows of one
sample go into the store in ONE insert, so a sample is either fully scored or not at all and a
crash never scores one twice; worker i of N only reads samples whose
cityHash64(request_id) % N == i, so N workers never score one twice either.

Probe traffic asks the Budget first, and the worker backs off when the upstream answers
429/5xx, fails, or is slower than `slow_s`. No exception of a round stops the loop: it is
logged, counted, and the round is retried after a pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from probes import worker_sql
from probes.budget import Backoff, Budget
from probes.consistency import (
    Reasked,
    Reply,
    non_answer,
    reask,
    score_consistency,
)
from probes.detect import run_detection, with_windows
from probes.factuality import (
    Canary,
    GoldenError,
    ask_canary,
    score_canary,
)
from probes.probe_settings import ProbeSettings, scorer_config, settings_canaries
from probes.rounds import canary_order, canary_tokens, rotation
from probes.samples import (
    Sample,
    Scored,
    cheap_probes,
    endpoint,
    estimate_tokens,
    overloaded,
    reaskable,
    settle,
)
from probes.scorer import (
    QUALITY_COLUMNS,
    Scorer,
    ScorerError,
    load_scorer,
)
from sidecar.config import ConfigError, Settings
from sidecar.store.client import RowsRejected, Store, StoreError
from sidecar.wire import PROBE_TOKEN_HEADER, prompt_text

log = logging.getLogger("fathom.probe")
Clock = Callable[[], float]  # seconds since the epoch
# What a round may fail with: the store (StoreError), the scorer (torch raises RuntimeError),
# the network (OSError, TimeoutError) and bad data (ValueError). Anything else is a bug.
FAILURES = (RuntimeError, OSError, ValueError)
RECENT_IDS = 10_000  # request ids remembered as scored (see Worker._recent)


# ---------------------------------------------------------------------------- counters


@dataclass(slots=True)
class WorkerStats:
    """Counters of one worker since it started (read them for metrics and health)."""

    rounds: int = 0
    samples_scored: int = 0  # samples with their quality rows written
    consistency_scored: int = 0
    skipped_budget: int = 0  # samples scored without consistency: over the probe budget
    skipped: Counter[str] = field(default_factory=Counter)  # ...for other reasons
    probe_requests: int = 0  # re-asks sent
    reasking: int = 0  # samples whose re-asks are in flight now
    canaries_sent: int = 0
    canaries_scored: int = 0
    canaries_failed: int = 0
    canary_rounds_deferred: int = 0  # over budget: tried again next round
    detections: int = 0
    regressions: int = 0
    errors: int = 0
    backoffs: int = 0

    def snapshot(self) -> WorkerStats:
        """A copy (the round's log line compares against it)."""
        return dataclasses.replace(self, skipped=Counter(self.skipped))

    def line(self, since: WorkerStats) -> str:
        """What happened since `since`, for the round's log line."""
        other = sum(self.skipped.values()) - sum(since.skipped.values())
        return (
            f"{self.samples_scored - since.samples_scored} samples scored "
            f"({self.consistency_scored - since.consistency_scored} with consistency, "
            f"{self.skipped_budget - since.skipped_budget} skipped for budget, {other} not "
            f"re-askable), {self.canaries_sent - since.canaries_sent} canaries sent "
            f"({self.canaries_failed - since.canaries_failed} failed), "
            f"{self.errors - since.errors} errors"
        )

    def busy_since(self, since: WorkerStats) -> bool:
        """Whether anything was done or went wrong since `since`."""
        return (self.samples_scored, self.canaries_sent, self.errors, self.detections) != (
            since.samples_scored, since.canaries_sent, since.errors, since.detections,
        )  # fmt: skip


# ---------------------------------------------------------------------------- the worker


class Worker:
    """One probe worker over a store, an upstream (the proxy, ideally) and a scorer."""

    def __init__(
        self,
        store: Store,
        session: aiohttp.ClientSession,
        target: str,
        scorer: Scorer,
        canaries: Sequence[Canary],
        settings: ProbeSettings,
        *,
        clock: Clock = time.time,
        stats: WorkerStats | None = None,
    ) -> None:
        self.store, self.settings, self.stats = store, settings, stats or WorkerStats()
        self._session, self._target, self._scorer = session, target, scorer
        self._canaries = canary_order(canaries)
        self._clock = clock
        self._budget = Budget.per_minute(settings.requests_per_min, settings.tokens_per_min, clock)
        self._backoff = Backoff()
        self._pause = 0.0  # set when the upstream asked for a rest during this round
        key = settings.api_key
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        if settings.token:
            self._headers[PROBE_TOKEN_HEADER] = settings.token
        # Ids scored lately: a store that shows inserts late (a cluster's Distributed tables
        # forward asynchronously) must not hand this worker the same sample twice.
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._targets: list[tuple[str, str]] = []
        self._targets_at = -float("inf")  # when the canary targets were last read
        self._canary_due: dict[tuple[str, str], float] = {}
        self._detect_at = clock()  # the first round runs detection

    @property
    def name(self) -> str:
        """'probe worker i/N', for log lines."""
        return f"probe worker {self.settings.worker_index}/{self.settings.worker_count}"

    def now(self) -> datetime:
        """The injected clock as an aware UTC datetime."""
        return datetime.fromtimestamp(self._clock(), UTC)

    async def run(self, stop: asyncio.Event) -> None:
        """Run rounds until `stop` is set; the samples in hand are finished first."""
        s = self.settings
        log.info(
            "%s started: target %s, k=%d, budget %g requests and %g tokens a minute, "
            "%d canaries (%d per round every %g s)", self.name, self._target, s.k,
            s.requests_per_min, s.tokens_per_min, len(self._canaries), s.canaries_per_round,
            s.canary_interval_s,
        )  # fmt: skip
        while not stop.is_set():
            pause = await self.step(stop)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
        log.info("%s stopped: %s", self.name, self.stats.line(WorkerStats()))

    async def step(self, stop: asyncio.Event) -> float:
        """One round; returns the seconds to pause before the next."""
        before = self.stats.snapshot()
        self.stats.rounds += 1
        self._pause = 0.0
        pause = self.settings.idle_s
        for what, part in (("detection", self.detect_if_due), ("canaries", self.canaries_if_due)):
            try:
                await part()
            except FAILURES as exc:
                self._failed(what, exc)
        if not self._pause:
            try:
                if await self.score_batch(stop):
                    pause = 0.0  # a full batch: there is probably more
            except FAILURES as exc:
                self._failed("scoring", exc)
        if not self._pause:
            self._backoff.succeeded()
        if self.stats.busy_since(before):
            log.info("%s round %d: %s", self.name, self.stats.rounds, self.stats.line(before))
        return max(pause, self._pause)

    def _failed(self, what: str, exc: BaseException) -> None:
        self.stats.errors += 1
        self._pause = max(self._pause, self._backoff.failed())
        # A store error's message says all there is; anything else deserves its traceback.
        log.warning(
            "%s: %s failed: %s; next try in %.0f s", self.name, what, exc, self._pause,
            exc_info=not isinstance(exc, StoreError),
        )  # fmt: skip

    def _rest(self) -> None:
        """The upstream is overloaded or slow: pause this worker's probe traffic."""
        self.stats.backoffs += 1
        self._pause = max(self._pause, self._backoff.failed())
        log.warning("%s: upstream overloaded or slow; pausing %.0f s", self.name, self._pause)

    # ------------------------------------------------------------------------ samples

    async def score_batch(self, stop: asyncio.Event) -> bool:
        """Score one batch of this worker's unscored samples; True when the batch was full."""
        s = self.settings
        since = self.now() - timedelta(seconds=s.lookback_s)
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
                self._rest()
                return False
        return len(rows) == s.batch and len(samples) > 0

    async def score(self, sample: Sample) -> Scored:
        """Every probe of one sample (nothing written)."""
        request, why_not = reaskable(sample)
        chat = sample.route == "chat"
        prompt = prompt_text(request, chat) if request is not None else ""
        # Tens of ms on a long answer: off the loop, which the proxy may share (serve --probes).
        cheap, useful = await asyncio.to_thread(cheap_probes, sample, prompt)
        if request is None:
            return Scored(cheap, why_not)
        k = self.settings.k
        if not useful:  # nothing to agree with: consistency 0, no re-ask
            return Scored((*cheap, non_answer("", self._scorer.name, k)))
        estimate = k * estimate_tokens(request, sample)
        if not self._budget.try_spend(k, estimate):
            return Scored(cheap, "budget")
        replies, busy = await self._reask(sample, request, estimate)
        try:
            consistency = await score_consistency(
                self._scorer, sample.response_text, replies.answers, prompt=prompt,
                tokens=replies.tokens, errors=replies.errors,
            )  # fmt: skip
        except ValueError as exc:  # bad data in this one sample: never retry it forever
            log.warning("%s: consistency of %s failed: %s", self.name, sample.request_id, exc)
            return Scored(cheap, "scoring_error", busy)
        if consistency is None:
            return Scored(cheap, "reask_failed", busy)
        return Scored((*cheap, consistency), "", busy)

    async def _reask(
        self, sample: Sample, request: dict[str, Any], estimate: int
    ) -> tuple[Reasked, bool]:
        """k re-asks pinned to the sample's deployment; (replies, upstream overloaded)."""
        k = self.settings.k
        started = time.monotonic()
        self.stats.reasking += 1
        try:
            replies = await reask(
                self._session, endpoint(self._target, sample.route), request, k=k,
                deployment=sample.deployment, headers=self._headers,
                read_timeout_s=self.settings.timeout_s,
            )  # fmt: skip
        finally:
            self.stats.reasking -= 1
        slow = time.monotonic() - started > self.settings.slow_s
        self.stats.probe_requests += k
        settle(self._budget.tokens, estimate, replies)
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
            log.error("%s: sample %s left unscored: %s", self.name, sample.request_id, exc)
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

    # ------------------------------------------------------------------------ canaries

    async def canaries_if_due(self) -> None:
        """A canary round for each of this worker's targets whose interval has passed."""
        s = self.settings
        if not self._canaries or s.canaries_per_round == 0:
            return
        now = self._clock()
        if now - self._targets_at >= min(s.canary_interval_s, 60.0):
            since = self.now() - timedelta(seconds=s.canary_lookback_s)
            parameters = worker_sql.targets_parameters(
                since, s.worker_index, s.worker_count, s.routed
            )
            rows = await self.store.query(worker_sql.CANARY_TARGETS, parameters)
            self._targets, self._targets_at = [(str(m), str(d)) for m, d in rows], now
        for target in self._targets:
            if self._pause:
                return
            if self._canary_due.get(target, -float("inf")) <= now and await self.canary_round(
                *target
            ):
                self._canary_due[target] = now + s.canary_interval_s

    async def canary_round(self, model: str, deployment: str) -> bool:
        """Send, score and store one round of canaries; False when the budget said not now."""
        s = self.settings
        round_index = int(self._clock() // s.canary_interval_s)
        chosen = rotation(self._canaries, s.canaries_per_round, round_index)
        if not self._budget.try_spend(len(chosen), sum(map(canary_tokens, chosen))):
            self.stats.canary_rounds_deferred += 1
            return False
        url = endpoint(self._target, "chat")
        replies = await asyncio.gather(*(
            ask_canary(self._session, url, canary, model, deployment=deployment,
                       headers=self._headers, read_timeout_s=s.timeout_s)
            for canary in chosen
        ))  # fmt: skip
        self.stats.canaries_sent += len(chosen)
        await self._score_canaries(model, deployment, chosen, replies)
        if any(overloaded(r.error) for r in replies):
            self._rest()
        return True

    async def _score_canaries(
        self, model: str, deployment: str, chosen: Sequence[Canary], replies: Sequence[Reply]
    ) -> None:
        """Score the answered canaries and store them in one insert (request_id '')."""
        answered = [(c, r) for c, r in zip(chosen, replies, strict=True) if not r.error]
        self.stats.canaries_failed += len(chosen) - len(answered)
        if not answered:
            return
        results = await asyncio.gather(
            *(score_canary(self._scorer, canary, reply.text) for canary, reply in answered)
        )
        ts = self.now()
        rows = [result.to_row(ts, "", model, deployment) for result in results]
        values = [[row[c] for c in QUALITY_COLUMNS] for row in rows]
        await self.store.insert("fathom.quality", QUALITY_COLUMNS, values)
        self.stats.canaries_scored += len(results)

    # ------------------------------------------------------------------------ detection

    async def detect_if_due(self) -> None:
        """Regression detection every detect_interval_s, on worker 0 only."""
        now = self._clock()
        if self.settings.worker_index != 0 or now < self._detect_at:
            return
        self._detect_at = now + self.settings.detect_interval_s
        windows = with_windows(self.settings.detect_window_s, self.settings.detect_baseline_s)
        outcomes = await run_detection(self.store, self.now(), windows)
        found = [o for o in outcomes if o.regression]
        self.stats.detections += 1
        self.stats.regressions += len(found)
        for o in found:
            log.warning(
                "%s: quality regression: model=%s deployment=%s probe=%s test=%s "
                "baseline=%.3f current=%.3f", self.name, *o.key, o.test, o.baseline, o.current,
            )  # fmt: skip


# ---------------------------------------------------------------------------- in-process


async def run_in_process(
    store: Store,
    settings: Settings,
    target_url: str,
    stop: asyncio.Event,
    *,
    stats: WorkerStats | None = None,
) -> None:
    """The worker inside `fathom serve --probes`: shares the service's store, re-asks through
    `target_url` (the proxy), loads the scorer off the event loop. A worker that cannot start
    logs why and returns: the proxy keeps serving."""
    try:
        probe = ProbeSettings.from_settings(settings)
        canaries = settings_canaries(settings)
        scorer = await asyncio.to_thread(load_scorer, scorer_config(settings))
    except (ConfigError, GoldenError, ScorerError, OSError, ImportError) as exc:
        log.error("probe worker not started: %s", exc)
        return
    try:
        async with client_session(probe) as session:
            worker = Worker(store, session, target_url, scorer, canaries, probe, stats=stats)
            await worker.run(stop)
    finally:
        await asyncio.to_thread(scorer.close)


def client_session(settings: ProbeSettings) -> aiohttp.ClientSession:
    """A session sized for the worker's concurrent probe requests (no total timeout)."""
    limit = settings.concurrency * settings.k + settings.canaries_per_round + 4
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30.0),
        trust_env=False,
    )
