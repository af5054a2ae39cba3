"""`fathom serve`: wires settings, proxy, metrics and store together and runs them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import uvloop
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from sidecar import config
from sidecar.config import ConfigError, Settings
from sidecar.drain import Drain
from sidecar.metrics import Gauge, Metrics
from sidecar.proxy import Proxy
from sidecar.record import Record
from sidecar.routing import Router, Upstream
from sidecar.sampler import Sampler
from sidecar.store.client import StoreError, open_store
from sidecar.store.schema import SchemaBehind, apply_schema, require
from sidecar.store.spool import SpoolError
from sidecar.store.writer import Writer, WriterSettings

log = logging.getLogger("fathom.serve")


class Service:
    """Everything one `fathom serve` process runs; `ready` drives /readyz."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Store and spool first: they are what can fail here, before anything needs closing.
        # The embedded engine in a child process: its inserts never stall the loop's clock.
        self.store = None if settings.store == "none" else open_store(settings.store, True)
        self.writer = None if self.store is None else Writer(self.store, _writer_settings(settings))
        self.metrics = Metrics(settings.provider, settings.model_label_cap)
        connector = aiohttp.TCPConnector(limit=settings.pool_limit, limit_per_host=0)
        timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout_s, sock_connect=settings.connect_timeout_s
        )
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, trust_env=False
        )
        default = Upstream(URL(settings.upstream), settings.deployment)
        self.router = Router(default, settings.routes, random.Random())
        self.sampler = Sampler.from_settings(settings)
        # A drain ends when the model server behind the default upstream has restarted.
        watched = (default.url.host or "", default.url.port or 80)
        self.drain = Drain(settings.drain_settle_s, settings.grace_s, watched)
        self.proxy = Proxy(
            settings, self.session, self.router.pick, self.on_record, time.perf_counter,
            random.Random(), should_sample=self.sampler.should_sample if self.writer else None,
            on_answer=self.on_answer if self.writer else None,
            refusing=lambda: self.drain.refusing,
        )  # fmt: skip
        self.ready = False
        self.records = 0
        self.listeners: list[Callable[[Record], None]] = []
        self.runners: list[web.AppRunner] = []
        self.addresses: dict[str, str] = {}
        self.tasks: set[asyncio.Future[dict[str, Any]]] = set()
        self.stopping = asyncio.Event()
        self.worker: asyncio.Task[None] | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """A proxied request, counted while in flight (what a drain waits for)."""
        self.drain.enter()
        try:
            return await self.proxy.handle(request)
        finally:
            self.drain.leave()

    def on_record(self, record: Record, gaps: list[float]) -> None:
        """Every finished request: metrics, the store, and any listener (tests, the demo)."""
        self.records += 1
        self.metrics.record(record, gaps)
        if self.writer is not None:
            self.writer.submit("fathom.requests", record.to_row())
        for listener in self.listeners:
            listener(record)

    def on_answer(self, record: Record, body: bytes, answer: str) -> None:
        """A sampled answer: redact and cap it off the event loop, then queue its row."""
        if self.writer is None:
            return
        if len(self.tasks) >= SAMPLE_BACKLOG:
            self.writer.rows_dropped["sample_backlog"] += 1
            return
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self.sampler.row, record, body, answer)
        self.tasks.add(future)
        future.add_done_callback(self._sampled)

    def _sampled(self, future: asyncio.Future[dict[str, Any]]) -> None:
        self.tasks.discard(future)
        if self.writer is not None and not future.cancelled() and future.exception() is None:
            self.writer.submit("fathom.samples", future.result())


def _writer_settings(settings: Settings) -> WriterSettings:
    return WriterSettings(
        queue_rows=settings.writer_queue_rows,
        batch_rows=settings.writer_batch_rows,
        insert_max_rows=settings.writer_insert_max_rows,
        flush_s=settings.writer_flush_s,
        spool_dir=settings.spool_dir,
        spool_max_bytes=settings.spool_max_bytes,
        spool_ephemeral=settings.spool_ephemeral,
    )


SAMPLE_BACKLOG = 1000  # sampled answers being redacted at once; past it they are counted, dropped


SERVICE = web.AppKey("service", Service)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `fathom serve`."""
    config.add_arguments(parser)
    parser.add_argument(
        "--probes", action="store_true", default=None, help="also run the probe worker in-process"
    )


def run(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT, then drain; exit 0 on a clean stop, 2 on bad settings."""
    try:
        settings = config.load(args)
        if not settings.upstream:
            raise ConfigError("no upstream: pass --upstream URL or set FATHOM_UPSTREAM")
    except ConfigError as exc:
        print(f"fathom serve: {exc}", file=sys.stderr)
        return 2
    try:
        uvloop.run(serve_until_signalled(settings))
    except (SpoolError, StoreError, ConfigError) as exc:
        print(f"fathom serve: {exc}", file=sys.stderr)
        return 2
    return 0


Listener = Callable[[Record], None]


async def serve_until_signalled(settings: Settings, listener: Listener | None = None) -> None:
    """Serve; on SIGTERM or SIGINT stop accepting, let streams finish, flush, return."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings) as service:
        if listener is not None:
            service.listeners.append(listener)
        for name, address in service.addresses.items():
            print(f"{name} listening on {address}", flush=True)
        await stop.wait()
        log.info("stopping: draining in-flight requests for up to %.0f s", settings.grace_s)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Service]:
    """A started service; leaving the block drains and stops it (the SIGTERM path)."""
    service = Service(settings)
    try:
        await _open_store(service)
        await _start(service)
        if settings.probes:
            _start_probes(service)
        # Everything allocated so far lives for the whole process: keep it out of the
        # collector's full passes, which would otherwise pause streams for milliseconds.
        gc.freeze()
        service.ready = True
        yield service
    finally:
        service.ready = False
        await service.drain.close()
        service.stopping.set()  # the probe worker finishes the sample in hand...
        if service.worker is not None:  # ...whose re-asks still need the proxy
            await asyncio.wait({service.worker}, timeout=settings.grace_s)
        for runner in service.runners:  # the proxy first: it waits for in-flight streams
            await runner.cleanup()
        await service.session.close()
        if service.tasks:
            await asyncio.wait(service.tasks, timeout=settings.grace_s)
        if service.writer is not None:
            await service.writer.stop(settings.grace_s)
        if service.store is not None:
            service.store.close()
        service.metrics.shutdown()
        log.info("stopped after %d records", service.records)


def _start_probes(service: Service) -> None:
    """The probe worker in this process, sharing the embedded store; probes go via the proxy."""
    from fathom.commands.probe import probe_gauges
    from probes.worker import WorkerStats, run_in_process

    if service.store is None:
        raise ConfigError("--probes needs a store: the worker reads samples from it")
    stats = WorkerStats()
    target = service.addresses["proxy"]
    coro = run_in_process(service.store, service.settings, target, service.stopping, stats=stats)
    service.worker = asyncio.create_task(coro, name="fathom-probes")
    service.metrics.observe(probe_gauges(stats))


async def _open_store(service: Service) -> None:
    """Bring the schema up (embedded) or check it (server), then start the writer.

    A server store's schema belongs to `fathom schema apply` alone: DDL from every sidecar
    would create single-server tables on whichever cluster node it reached first. An
    unreachable store only means spooling; a reachable one that is behind stops the start.
    """
    if service.store is None or service.writer is None:
        return
    store = service.store
    try:
        if store.url.kind == "chdb" and not service.settings.schema_check_only:
            applied = await store.call(apply_schema)
            if applied:
                log.info("schema at %s: applied %s", store.url.safe, ", ".join(applied))
        else:
            await store.call(require)
    except SchemaBehind:
        raise
    except StoreError as exc:
        log.warning("%s: records will be spooled until the store answers", exc)
    await service.writer.start()
    service.metrics.observe(_writer_gauges(service.writer))


def _writer_gauges(writer: Writer) -> list[Gauge]:
    return [
        Gauge("fathom.writer.queue_rows", "rows waiting in memory", lambda: writer.queue_depth),
        Gauge("fathom.writer.spool_bytes", "bytes spooled on disk", lambda: writer.spool.bytes),
        # The bounds, so that alert rules can say "nearly full" without repeating settings.
        Gauge(
            "fathom.writer.queue_max_rows", "writer_queue_rows", lambda: writer.settings.queue_rows
        ),
        Gauge(
            "fathom.writer.spool_max_bytes",
            "spool_max_bytes",
            lambda: writer.settings.spool_max_bytes,
        ),
        Gauge("fathom.writer.store_up", "1 while the store takes inserts", lambda: writer.store_up),
        Gauge("fathom.writer.rows_written", "rows inserted", lambda: writer.rows_written, True),
        Gauge("fathom.writer.rows_spooled", "rows spooled", lambda: writer.rows_spooled, True),
        Gauge(
            "fathom.writer.rows_dropped",
            "rows lost: queue or spool full, or left on an ephemeral spool",
            lambda: sum(writer.rows_dropped.values()),
            True,
        ),
    ]


async def _start(service: Service) -> None:
    settings = service.settings
    logging.getLogger("aiohttp.server").addFilter(_without_request_bytes)
    proxy_app = web.Application()
    proxy_app[SERVICE] = service
    proxy_app.router.add_route("*", "/{tail:.*}", service.handle)
    admin_app = web.Application()
    admin_app[SERVICE] = service
    admin_app.router.add_get("/metrics", _metrics)
    admin_app.router.add_get("/healthz", _healthz)
    admin_app.router.add_get("/readyz", _readyz)
    admin_app.router.add_get("/drain", _drain)
    for name, app, (host, port) in (
        ("proxy", proxy_app, settings.listen_addr),
        ("admin", admin_app, settings.admin_addr),
    ):
        # aiohttp's keep-alive timer also runs while headers arrive: it is the header timeout.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=settings.grace_s,
            keepalive_timeout=settings.header_timeout_s,
        )  # fmt: skip
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        service.runners.append(runner)
        bound = runner.addresses[0]
        service.addresses[name] = f"http://{bound[0]}:{bound[1]}"


def _without_request_bytes(record: logging.LogRecord) -> bool:
    """Log a malformed request by its error class only: aiohttp's message quotes the raw
    header bytes, which can hold the client's Authorization or API key."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, HttpProcessingError):
        record.msg = f"{record.getMessage()}: {type(exc).__name__} (HTTP {exc.code})"
        record.args, record.exc_info, record.exc_text = (), None, None
        record.levelno = min(record.levelno, logging.WARNING)  # the client's fault, not ours
        record.levelname = logging.getLevelName(record.levelno)
    return True


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[SERVICE].metrics.exposition()
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    ready = service.ready and not service.drain.started
    body: dict[str, object] = {"ready": ready}
    if service.drain.phase:
        body["drain"] = service.drain.phase
    return web.json_response(body, status=200 if ready else 503)


async def _drain(request: web.Request) -> web.Response:
    """The model server's preStop hook: returns once Fathom has drained (see sidecar.drain)."""
    result = await request.app[SERVICE].drain.run()
    return web.json_response(dataclasses.asdict(result))
