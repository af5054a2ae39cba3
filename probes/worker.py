"""The probe worker: sample scoring, canary rounds and regression detection over one budget
and one HTTP client, run in rounds.

Each round (1) runs detection when due (worker 0 only), (2) sends the canary rounds that are
due (probes.rounds), and (3) scores one batch of this worker's unscored samples
(probes.samples). The parts share one ProbeTraffic (probes.traffic): the budget every probe
request asks first, and the backoff when the upstream answers 429/5xx, fails, or is slower
than `slow_s` — a part that finds the upstream overloaded ends the round's traffic, and the
worker pauses. No exception of a round stops the loop: it is logged, counted, and the round
is retried after a pause. `probe_worker` opens what a worker holds (the scorer, the HTTP
client) and closes it when the worker has stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

import aiohttp

from probes.detect import run_detection
from probes.detect_settings import DetectionSettings
from probes.factuality import Canary
from probes.probe_settings import ProbeSettings, ScorerConfig
from probes.rounds import CanaryRounds
from probes.samples import SampleScoring
from probes.scorer import Scorer, load_scorer
from probes.traffic import ProbeTraffic, client_session
from probes.worker_stats import WorkerStats as WorkerStats
from sidecar.store.client import Store, StoreError

log = logging.getLogger("fathom.probe")
Clock = Callable[[], float]  # seconds since the epoch
# What a round may fail with: the store (StoreError), the scorer (torch raises RuntimeError),
# the network (OSError, TimeoutError) and bad data (ValueError). Anything else is a bug.
FAILURES = (RuntimeError, OSError, ValueError)


class DetectionTimer:
    """Regression detection every detect_interval_s, on worker 0 only. Awaited in the worker's
    loop; `run_detection` runs the statistics (pure numpy) in a thread."""

    def __init__(
        self,
        store: Store,
        settings: ProbeSettings,
        detection: DetectionSettings,
        stats: WorkerStats,
        clock: Clock,
        name: str,
    ) -> None:
        self.store, self.settings, self.detection, self.stats = store, settings, detection, stats
        self._clock, self._name = clock, name
        self._at = clock()  # the first round runs detection

    async def if_due(self) -> None:
        """Run detection if this is worker 0 and the interval has passed."""
        now = self._clock()
        if self.settings.worker_index != 0 or now < self._at:
            return
        self._at = now + self.settings.detect_interval_s
        outcomes = await run_detection(self.store, datetime.fromtimestamp(now, UTC), self.detection)
        found = [o for o in outcomes if o.regression]
        self.stats.detections += 1
        self.stats.regressions += len(found)
        for o in found:
            log.warning(
                "%s: quality regression: model=%s deployment=%s probe=%s test=%s "
                "baseline=%.3f current=%.3f", self._name, *o.key, o.test, o.baseline, o.current,
            )  # fmt: skip


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
        detection: DetectionSettings | None = None,
        clock: Clock = time.time,
        stats: WorkerStats | None = None,
    ) -> None:
        if settings.worker_index < 0:
            raise ValueError("the worker index is not known yet: ProbeSettings.resolved()")
        self.settings, self.stats = settings, stats or WorkerStats()
        self.scorer = scorer  # shared with the reference audit of the same process
        s, name = settings, self.name
        self.traffic = ProbeTraffic(session, target, settings, self.stats, clock, name)
        self.samples = SampleScoring(store, self.traffic, scorer, s, self.stats, clock, name)
        self.canaries = CanaryRounds(store, self.traffic, scorer, canaries, s, self.stats, clock)
        detection = detection or DetectionSettings()
        self.detection = DetectionTimer(store, s, detection, self.stats, clock, name)

    @property
    def name(self) -> str:
        """'probe worker i/N', for log lines."""
        return f"probe worker {self.settings.worker_index}/{self.settings.worker_count}"

    async def run(self, stop: asyncio.Event) -> None:
        """Run rounds until `stop` is set; the samples in hand are finished first."""
        s = self.settings
        log.info(
            "%s started: target %s, k=%d, budget %g requests and %g tokens a minute, "
            "%d canaries (%d per round every %g s)", self.name, self.traffic.target, s.k,
            s.requests_per_min, s.tokens_per_min, len(self.canaries.canaries),
            s.canaries_per_round, s.canary_interval_s,
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
        traffic = self.traffic
        traffic.pause = 0.0
        pause = self.settings.idle_s
        parts = (("detection", self.detection.if_due), ("canaries", self.canaries.if_due))
        for what, part in parts:
            try:
                await part()
            except FAILURES as exc:
                self._failed(what, exc)
        if not traffic.pause:
            try:
                if await self.samples.score_batch(stop):
                    pause = 0.0  # a full batch: there is probably more
            except FAILURES as exc:
                self._failed("scoring", exc)
        if not traffic.pause:
            traffic.backoff.succeeded()
        if self.stats.busy_since(before):
            log.info("%s round %d: %s", self.name, self.stats.rounds, self.stats.line(before))
        return max(pause, traffic.pause)

    def _failed(self, what: str, exc: BaseException) -> None:
        self.traffic.failed()
        # A store error's message says all there is; anything else deserves its traceback.
        log.warning(
            "%s: %s failed: %s; next try in %.0f s", self.name, what, exc, self.traffic.pause,
            exc_info=not isinstance(exc, StoreError),
        )  # fmt: skip


@contextlib.asynccontextmanager
async def probe_worker(
    store: Store,
    target: str,
    settings: ProbeSettings,
    scorer: ScorerConfig,
    canaries: Sequence[Canary],
    *,
    detection: DetectionSettings | None = None,
    stats: WorkerStats | None = None,
) -> AsyncIterator[Worker]:
    """A worker with its scorer (loaded off the event loop) and its one HTTP client, both
    closed on exit. Raises ScorerError, OSError or ImportError when the scorer cannot load."""
    loaded = await asyncio.to_thread(load_scorer, scorer)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(asyncio.to_thread, loaded.close)
        session = await stack.enter_async_context(client_session(settings))
        yield Worker(
            store, session, target, loaded, canaries, settings, detection=detection, stats=stats
        )
