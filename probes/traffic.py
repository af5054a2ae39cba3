"""What all probe requests of one worker share: one HTTP client, one budget, one backoff.

Sample re-asks and canary rounds both ask `budget` before they send, so together they stay
within the probe budget. A part that finds the upstream overloaded (429/5xx, failures, or
slower than `slow_s`) calls `rest()`: the round stops sending and the worker pauses, every
part's traffic with it (see probes.worker.Worker.step).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import aiohttp

from probes.budget import Backoff, Budget
from probes.probe_settings import ProbeSettings
from probes.worker_stats import WorkerStats
from sidecar.wire import PROBE_TOKEN_HEADER

log = logging.getLogger("fathom.probe")
# A re-ask goes through the endpoint that answered the sample: its body is that API's.
ROUTE_PATHS = {
    "chat": "/v1/chat/completions",
    "completion": "/v1/completions",
    "responses": "/v1/responses",
    "messages": "/v1/messages",
}


class ProbeTraffic:
    """The worker's HTTP client, target, headers, budget and backoff."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        target: str,
        settings: ProbeSettings,
        stats: WorkerStats,
        clock: Callable[[], float],
        name: str,
    ) -> None:
        self.session, self.target, self.timeout_s = session, target, settings.timeout_s
        self.budget = Budget.per_minute(settings.requests_per_min, settings.tokens_per_min, clock)
        self.backoff = Backoff()
        self.pause = 0.0  # set when the upstream asked for a rest during this round
        key = settings.api_key
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        if settings.token:
            self.headers[PROBE_TOKEN_HEADER] = settings.token
        self._stats, self._name = stats, name

    def url(self, route: str) -> str:
        """The URL a request of `route` goes to ('.../v1' in the target is tolerated)."""
        base = self.target.rstrip("/").removesuffix("/v1")
        return base + ROUTE_PATHS.get(route, "/v1/completions")

    def rest(self) -> None:
        """The upstream is overloaded or slow: pause this worker's probe traffic."""
        self._stats.backoffs += 1
        self.pause = max(self.pause, self.backoff.failed())
        log.warning("%s: upstream overloaded or slow; pausing %.0f s", self._name, self.pause)

    def failed(self) -> None:
        """A part of the round failed: back off as if the upstream had asked for a rest."""
        self._stats.errors += 1
        self.pause = max(self.pause, self.backoff.failed())


def client_session(settings: ProbeSettings) -> aiohttp.ClientSession:
    """A session sized for the worker's concurrent probe requests (no total timeout)."""
    limit = settings.concurrency * settings.k + settings.canaries_per_round + 4
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30.0),
        trust_env=False,
    )
