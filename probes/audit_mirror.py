"""The mirrored reference audit inside `fathom serve --probes`: production prompts, as they are
sampled, asked again of the deployment that answered them and of the route's reference.

Every `interval_s` the loop reads the samples stored since it last looked and draws, at
`rate`, those of an audited deployment (a route with a `reference`) that can be re-asked
exactly (probes.audit_sampled: a truncated or redacted prompt asks another question, so it is
skipped and counted). When a deployment has `prompts` of them, one audit runs on them and on
the next `canaries` canaries (probes.audit: the same comparisons as `fathom audit`), and its
verdicts go to fathom.quality (probes.audit_report). Requests go through the proxy with the
deployment pinned (the reference gets no other traffic), labelled `origin='audit'`, never
sampled, and every one asks the audit's budget first (probes.audit_budget).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import numpy as np

from probes.audit import Sides, run_audit
from probes.audit_budget import AuditBudget
from probes.audit_client import Caller, Endpoint
from probes.audit_report import AuditPrompt, AuditReport, write_results
from probes.audit_sampled import Audited, SampledPrompts
from probes.audit_settings import AuditSettings
from probes.golden import Canary
from probes.rounds import canary_order
from probes.scorer import Scorer
from sidecar.store.client import Store
from sidecar.wire import DEPLOYMENT_HEADER, PROBE_TOKEN_HEADER

log = logging.getLogger("fathom.audit")
Clock = Callable[[], float]  # seconds since the epoch
FAILURES = (RuntimeError, OSError, ValueError)  # the store, the scorer, the network, bad data


@dataclass(slots=True)
class MirrorStats:
    """What the audits did (what was mirrored: probes.audit_sampled.SampledStats)."""

    audits: int = 0
    diverged: int = 0
    errors: int = 0


@dataclass(frozen=True, slots=True)
class MirrorTarget:
    """Where audit requests go (the proxy) and the headers that let it trust them."""

    url: str  # the proxy's base URL
    token: str = ""  # the proxy's probe_token, '' when none is configured
    api_key: str = ""  # sent upstream as a Bearer token (probe_api_key)

    def headers(self, deployment: str) -> dict[str, str]:
        """Headers pinning `deployment`."""
        found = {DEPLOYMENT_HEADER: deployment}
        if self.token:
            found[PROBE_TOKEN_HEADER] = self.token
        if self.api_key:
            found["Authorization"] = f"Bearer {self.api_key}"
        return found


class MirroredAudit:
    """Mirrors sampled prompts of the audited deployments and writes verdicts."""

    def __init__(
        self,
        store: Store,
        session: aiohttp.ClientSession,
        target: MirrorTarget,
        audited: Sequence[Audited],
        settings: AuditSettings,
        canaries: Sequence[Canary],
        scorer: Scorer,
        budget: AuditBudget,
        *,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self.store, self.session, self.target, self.settings = store, session, target, settings
        self.sampled = SampledPrompts(store, audited, settings.rate, settings.prompts, clock, rng)
        self.canaries, self.scorer, self.budget = canary_order(canaries), scorer, budget
        self.stats = MirrorStats()
        self._clock, self._rng = clock, rng
        self._next_canary = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Look for samples and audit every `interval_s` until `stop` is set."""
        s = self.settings
        log.info(
            "reference audit started: %s; rate %g, %d prompts and %d canaries a verdict, "
            "budget %g requests and %g tokens a minute", ", ".join(
                f"{a.model}/{a.deployment} vs {a.reference}" for a in self.sampled.audited.values()
            ), s.rate, s.prompts, s.canaries, s.requests_per_min, s.tokens_per_min,
        )  # fmt: skip
        while not stop.is_set():
            try:
                await self.step(stop)
            except FAILURES as exc:
                self.stats.errors += 1
                log.warning("reference audit round failed: %s; next try in %.0f s", exc,
                            s.interval_s, exc_info=not isinstance(exc, RuntimeError))  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), s.interval_s)
        log.info("reference audit stopped: %s; %s", self.stats, self.sampled.stats)

    async def step(self, stop: asyncio.Event) -> None:
        """Collect new prompts; audit every deployment that has enough."""
        await self.sampled.collect()
        for audited in self.sampled.audited.values():
            if len(audited.prompts) >= self.settings.prompts and not stop.is_set():
                prompts, audited.prompts = audited.prompts, []
                await self.audit(audited, prompts, stop)

    def next_canaries(self) -> list[Canary]:
        """The next `canaries` canaries, cycling through the golden set."""
        count = min(self.settings.canaries, len(self.canaries))
        start = self._next_canary
        self._next_canary = (start + count) % max(1, len(self.canaries))
        return [self.canaries[(start + i) % len(self.canaries)] for i in range(count)]

    async def audit(
        self, audited: Audited, prompts: Sequence[AuditPrompt], stop: asyncio.Event
    ) -> AuditReport | None:
        """One audit of `prompts` (and canaries) against the reference; its rows written."""
        s = self.settings
        sides = Sides(
            self._caller(audited.reference, audited.model),
            self._caller(audited.deployment, audited.model),
            s, np.random.default_rng(self._rng.getrandbits(63)), log.debug,
        )  # fmt: skip
        report = await run_audit(sides, prompts, self.next_canaries(), self.scorer)
        if stop.is_set():
            return None  # cut short: requests were refused, the figures would say nothing
        written = await write_results(
            self.store, report, datetime.fromtimestamp(self._clock(), UTC)
        )
        self.stats.audits += 1
        self.stats.diverged += int(report.diverges)
        lines = "; ".join(f"{c.probe} {c.verdict}" + (f" p={c.p_value:.3g}" if c.ran else "")
                          for c in report.comparisons)  # fmt: skip
        level = logging.WARNING if report.diverges else logging.INFO
        log.log(level, "reference audit of %s/%s vs %s on %d prompts: %s (%d rows)",
                audited.model, audited.deployment, audited.reference, len(prompts), lines,
                written)  # fmt: skip
        return report

    def _caller(self, deployment: str, model: str) -> Caller:
        endpoint = Endpoint(deployment, self.target.url.rstrip("/").removesuffix("/v1"), model)
        limit = asyncio.Semaphore(self.settings.concurrency)
        return Caller(endpoint, self.session, limit, self.settings.read_timeout_s,
                      self.target.headers(deployment), self.budget)  # fmt: skip


def audit_session(settings: AuditSettings) -> aiohttp.ClientSession:
    """The audit's own HTTP client, sized for both sides' concurrent requests."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=2 * settings.concurrency + 4),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30.0),
        trust_env=False,
    )


@contextlib.asynccontextmanager
async def mirrored_audit(
    store: Store,
    target: MirrorTarget,
    pairs: Sequence[tuple[str, str, str]],
    settings: AuditSettings,
    canaries: Sequence[Canary],
    scorer: Scorer,
    stop: asyncio.Event,
    *,
    clock: Clock,
    rng: random.Random,
) -> AsyncIterator[MirroredAudit]:
    """A mirrored audit of the (model, deployment, reference deployment) `pairs`, with its
    HTTP client (closed on exit) and its budget (whose waits end when `stop` is set)."""
    budget = AuditBudget.per_minute(settings.requests_per_min, settings.tokens_per_min, clock, stop)
    audited = [Audited(model, deployment, reference) for model, deployment, reference in pairs]
    async with audit_session(settings) as session:
        yield MirroredAudit(store, session, target, audited, settings, canaries, scorer, budget,
                            clock=clock, rng=rng)  # fmt: skip
