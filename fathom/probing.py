"""The probe worker as a part of a Fathom process: its counters as metrics (`fathom probe` and
`fathom serve --probes`), and the worker inside `fathom serve --probes`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os

from fathom.settings import Settings
from probes.factuality import GoldenError
from probes.probe_settings import settings_canaries
from probes.scorer import ScorerError
from probes.worker import WorkerStats, probe_worker
from sidecar.config import ConfigError
from sidecar.metrics import Gauge
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
    logs why and returns: the proxy keeps serving."""
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
        await worker.run(stop)


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
