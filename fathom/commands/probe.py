"""`fathom probe`: one probe worker over a store, re-asking through an upstream.

Point --upstream at the proxy (the sidecar), so that probe traffic is measured, labelled
origin='probe'/'canary' and kept out of user figures; the model server itself works too.
Worker i of N (FATHOM_WORKER_INDEX / FATHOM_WORKER_COUNT, or the StatefulSet ordinal ending
HOSTNAME) scores only its share of the samples. The schema is never applied here (`fathom
schema apply`, the schema Job, owns it): while the store lacks a migration of this release the
worker scores nothing and says so, checking again every few seconds. SIGTERM: the samples in
hand are finished and written, then the process exits 0.
With `probe_admin` set (env FATHOM_PROBE_ADMIN=HOST:PORT) it serves /healthz (200 while the
worker runs) and /metrics (the worker's counters), for the kubelet's probes and Prometheus.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
from collections.abc import Mapping

import uvloop
from aiohttp import web

from probes.factuality import Canary, GoldenError
from probes.probe_settings import ProbeSettings, scorer_config, settings_canaries
from probes.scorer import ScorerError, load_scorer
from probes.worker import Worker, WorkerStats, client_session
from sidecar import config
from sidecar.config import ConfigError, Settings
from sidecar.metrics import Gauge, Metrics
from sidecar.store.client import Store, StoreError, open_store, parse_store_url
from sidecar.store.schema import require

log = logging.getLogger("fathom.probe")
SCHEMA_POLL_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `fathom probe`; every other setting comes from env FATHOM_* or the YAML file."""
    parser.add_argument("--config", help="YAML settings file (env FATHOM_CONFIG)")
    parser.add_argument(
        "--store", help="store URL: http://user:pass@host:8123/fathom or chdb:///path (env "
        "FATHOM_STORE)",
    )  # fmt: skip
    parser.add_argument(
        "--upstream", help="base URL probe requests go to: the proxy, so they are measured and "
        "labelled, or the model server (env FATHOM_UPSTREAM)",
    )  # fmt: skip


def without_blanks(env: Mapping[str, str]) -> dict[str, str]:
    """The environment minus empty FATHOM_* values (a StatefulSet without the pod-index
    label sets FATHOM_WORKER_INDEX to '': the hostname ordinal decides then)."""
    return {k: v for k, v in env.items() if not (k.startswith("FATHOM_") and not v.strip())}


def prepare(
    args: argparse.Namespace, env: Mapping[str, str]
) -> tuple[Settings, ProbeSettings, list[Canary]]:
    """Settings, worker settings and canaries, or ConfigError/GoldenError/StoreError."""
    settings = config.load(args, env)
    if not settings.upstream:
        raise ConfigError("no upstream: pass --upstream URL (the proxy) or set FATHOM_UPSTREAM")
    if settings.store == "none":
        raise ConfigError("the probe worker needs a store: pass --store URL or set FATHOM_STORE")
    parse_store_url(settings.store)
    probe = ProbeSettings.from_settings(settings, env)
    return settings, probe, settings_canaries(settings)


def run(args: argparse.Namespace) -> int:
    """Run the worker until SIGTERM/SIGINT; 0 on a clean stop, 2 on bad settings."""
    env = without_blanks(os.environ)
    try:
        settings, probe, canaries = prepare(args, env)
    except (ConfigError, GoldenError, StoreError) as exc:
        print(f"fathom probe: {exc}", file=sys.stderr)
        return 2
    return uvloop.run(_main(settings, probe, canaries))


async def _main(settings: Settings, probe: ProbeSettings, canaries: list[Canary]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stats = WorkerStats()
    metrics = Metrics(settings.provider, settings.model_label_cap)
    metrics.observe(probe_gauges(stats))
    working: asyncio.Task[int] = asyncio.create_task(
        _work(settings, probe, canaries, stats, stop), name="fathom-probe"
    )
    admin = await _serve_admin(settings.probe_admin, metrics, working)
    try:
        return await working
    finally:
        if admin is not None:
            await admin.cleanup()
        metrics.shutdown()


async def _work(
    settings: Settings,
    probe: ProbeSettings,
    canaries: list[Canary],
    stats: WorkerStats,
    stop: asyncio.Event,
) -> int:
    store = open_store(settings.store)
    try:
        if not await wait_for_schema(store, stop):
            return 0
        try:
            scorer = await asyncio.to_thread(load_scorer, scorer_config(settings))
        except (ScorerError, OSError, ImportError) as exc:
            print(f"fathom probe: cannot load the scorer: {exc}", file=sys.stderr)
            return 2
        try:
            async with client_session(probe) as session:
                worker = Worker(
                    store, session, settings.upstream, scorer, canaries, probe, stats=stats
                )
                await worker.run(stop)
        finally:
            await asyncio.to_thread(scorer.close)
    finally:
        store.close()
    return 0


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


WORKING = web.AppKey("working", asyncio.Task)
METRICS = web.AppKey("metrics", Metrics)


async def _serve_admin(
    address: str, metrics: Metrics, working: asyncio.Task[int]
) -> web.AppRunner | None:
    """/healthz and /metrics at `address` (HOST:PORT); none when it is ''."""
    if not address:
        return None
    app = web.Application()
    app[WORKING], app[METRICS] = working, metrics
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = config.parse_hostport(address, "probe_admin")
    await web.TCPSite(runner, host, port).start()
    bound = runner.addresses[0]
    print(f"admin listening on http://{bound[0]}:{bound[1]}", flush=True)
    return runner


async def _healthz(request: web.Request) -> web.Response:
    alive = not request.app[WORKING].done()
    return web.json_response({"alive": alive}, status=200 if alive else 503)


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


async def wait_for_schema(store: Store, stop: asyncio.Event, poll_s: float = SCHEMA_POLL_S) -> bool:
    """Wait until the store answers and has every migration of this release; False when
    stopped first. Waiting, not exiting: workers start beside the schema Job."""
    while not stop.is_set():
        try:
            await store.call(require)
            return True
        except StoreError as exc:  # unreachable, or SchemaBehind saying what to apply
            log.warning("%s; checking again in %.0f s", exc, poll_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), poll_s)
    return False
