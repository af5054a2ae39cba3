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
import logging
import os
import signal
import sys
from collections.abc import Mapping

import uvloop
from aiohttp import web

from fathom import settings as fathom_settings
from fathom.lifecycle import background, serving
from fathom.probing import probe_gauges
from fathom.settings import Settings
from probes.factuality import Canary, GoldenError
from probes.probe_settings import ProbeSettings, settings_canaries
from probes.scorer import ScorerError
from probes.worker import WorkerStats, probe_worker
from sidecar.config import ConfigError, parse_hostport
from sidecar.metrics import Metrics
from sidecar.otlp import metric_exporter
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
    settings = fathom_settings.load(args, env)
    if not settings.routing.upstream:
        raise ConfigError("no upstream: pass --upstream URL (the proxy) or set FATHOM_UPSTREAM")
    if settings.store == "none":
        raise ConfigError("the probe worker needs a store: pass --store URL or set FATHOM_STORE")
    parse_store_url(settings.store)
    probe = settings.probe_worker(env.get("HOSTNAME", ""))
    return settings, probe, settings_canaries(probe)


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
    """The metrics, the worker and its admin server; stopped in reverse on SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stats = WorkerStats()
    async with contextlib.AsyncExitStack() as stack:
        # Its gauges go over OTLP too when asked; its requests' spans are the proxy's.
        exporter = metric_exporter(os.environ) if settings.metrics.otlp_metrics else None
        metrics = Metrics(settings.metrics.provider, settings.metrics.model_label_cap, exporter)
        stack.callback(metrics.shutdown)
        metrics.observe(probe_gauges(stats))
        work = _work(settings, probe, canaries, stats, stop)
        working = await stack.enter_async_context(background(work, stop, None, "fathom-probe"))
        if settings.probe_admin:
            address = parse_hostport(settings.probe_admin, "probe_admin")
            runner = await stack.enter_async_context(
                serving(_admin_app(metrics, working), address, access_log=None)
            )
            bound = runner.addresses[0]
            print(f"admin listening on http://{bound[0]}:{bound[1]}", flush=True)
        return await working


async def _work(
    settings: Settings,
    probe: ProbeSettings,
    canaries: list[Canary],
    stats: WorkerStats,
    stop: asyncio.Event,
) -> int:
    """Wait for the schema, then run the worker until `stop`; 2 when the scorer cannot load."""
    async with contextlib.AsyncExitStack() as stack:
        store = open_store(settings.store)
        stack.callback(store.close)
        if not await wait_for_schema(store, stop):
            return 0
        opened = probe_worker(
            store, settings.routing.upstream, probe, settings.scorer, canaries,
            detection=settings.detection, stats=stats,
        )  # fmt: skip
        try:
            worker = await stack.enter_async_context(opened)
        except (ScorerError, OSError, ImportError) as exc:
            print(f"fathom probe: cannot load the scorer: {exc}", file=sys.stderr)
            return 2
        await worker.run(stop)
    return 0


WORKING = web.AppKey("working", asyncio.Task)
METRICS = web.AppKey("metrics", Metrics)


def _admin_app(metrics: Metrics, working: asyncio.Task[int]) -> web.Application:
    """/healthz (200 while the worker runs) and /metrics."""
    app = web.Application()
    app[WORKING], app[METRICS] = working, metrics
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    return app


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
