"""The probe worker as a part of a Fathom process: its counters as metrics (`fathom probe` and
`fathom serve --probes`), and the worker inside `fathom serve --probes`, beside the mirrored
reference audit when a route has a reference."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import time
from collections.abc import AsyncIterator

from fathom.settings import Settings
from probes.audit_mirror import MirroredAudit, MirrorTarget, mirrored_audit
from probes.factuality import Canary, GoldenError
from probes.probe_settings import settings_canaries
from probes.scorer import Scorer, ScorerError
from probes.worker import WorkerStats, probe_worker
from sidecar.config import ConfigError
from sidecar.metrics import Gauge
from sidecar.routing import audited_pairs
from sidecar.store.client import Store

log = logging.getLogger("fathom.probe")


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
    logs why and returns: the proxy keeps serving. Routes with a reference get the mirrored
    audit (probes.audit_mirror) beside the worker, sharing its scorer."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            probe = settings.probe_worker(os.environ.get("HOSTNAME", ""))
            canaries = settings_canaries(probe)
            worker = await stack.enter_async_context(probe_worker(
                store, target_url, probe, settings.scorer, canaries,
                detection=settings.detection, stats=stats,
            ))  # fmt: skip
        except (ConfigError, GoldenError, ScorerError, OSError, ImportError) as exc:
            log.error("probe worker not started: %s", exc)
            return
        audit = await stack.enter_async_context(auditing(
            store, settings, target_url, canaries, worker.scorer, stop, probe.worker_index
        ))  # fmt: skip
        await asyncio.gather(worker.run(stop), *([audit.run(stop)] if audit else []))


@contextlib.asynccontextmanager
async def auditing(
    store: Store,
    settings: Settings,
    target_url: str,
    canaries: list[Canary],
    scorer: Scorer,
    stop: asyncio.Event,
    worker_index: int,
) -> AsyncIterator[MirroredAudit | None]:
    """The mirrored reference audit of the routes with a reference, or None when no route has
    one. One audit per deployment, not one per worker: worker 0 runs it (as it runs detection)."""
    pairs = [(m, d, r.deployment) for m, d, r in audited_pairs(settings.routing.routes)]
    if not pairs or worker_index != 0:
        yield None
        return
    target = MirrorTarget(target_url, settings.proxy.probe_token, settings.worker.api_key)
    rng = random.Random(settings.audit.seed)
    async with mirrored_audit(
        store, target, pairs, settings.audit, canaries, scorer, stop, clock=time.time, rng=rng
    ) as audit:
        yield audit


def probe_gauges(stats: WorkerStats) -> list[Gauge]:
    """The worker's counters as metrics (`fathom probe`, and `fathom serve --probes`)."""
    counters = {
        "rounds": "worker rounds (a stalled worker stops counting)",
        "samples_scored": "samples scored",
        "skipped_budget": "samples over the probe budget",
        "probe_requests": "re-asks sent",
        "canaries_sent": "canary requests",
        "detections": "regression detection rounds",
        "regressions": "regressions found",
        "errors": "probe rounds that failed",
    }
    gauges = [
        Gauge(f"fathom.probes.{name}", text, functools.partial(_read, stats, name), True)
        for name, text in counters.items()
    ]
    redacted = "samples not re-asked: redaction changed their stored prompt"
    return [
        *gauges,
        Gauge(
            "fathom.probes.not_reasked_redacted", redacted, lambda: stats.skipped["redacted"], True
        ),
    ]


def _read(stats: WorkerStats, name: str) -> float:
    return float(getattr(stats, name))
