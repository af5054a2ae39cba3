"""One `fathom serve` process: the proxy and its admin server, the writer and the store, and
the probe worker when asked, started and stopped as one lifecycle.

`running()` starts one part at a time on an AsyncExitStack (fathom.lifecycle), so leaving it
stops them in reverse: /readyz turns 503 and a drain in progress ends; the probe worker
finishes the sample in hand, whose re-asks still need the proxy; the proxy stops accepting and
waits for the streams in flight, then the admin server stops; the upstream client closes;
answers still being redacted reach the writer, which flushes (or spools) what it holds; the
store closes; the metrics shut down. A part that fails to start stops those before it.
With `--workers N` each of N processes runs this (fathom.workers starts them, given a
`WorkerPlace`): the proxy port shared with SO_REUSEPORT, the admin server on a private Unix
socket, and the parent's store engine reached over its socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from fathom.lifecycle import background, serving
from fathom.settings import Settings
from sidecar.config import ConfigError
from sidecar.drain import Drain
from sidecar.metrics import Gauge, Metrics
from sidecar.proxy import Proxy
from sidecar.record import Record
from sidecar.routing import Router, Upstream
from sidecar.sampler import Sampler
from sidecar.spans import Spans
from sidecar.store.client import Place, Store, StoreError, open_store
from sidecar.store.schema import SchemaBehind, apply_schema, require
from sidecar.store.writer import Writer
from sidecar.telemetry import shut_down, telemetry

log = logging.getLogger("fathom.serve")
SAMPLE_BACKLOG = 1000  # sampled answers being redacted at once; past it they are counted, dropped
Listener = Callable[[Record], None]


class Service:
    """What one `fathom serve` process runs, over parts `running()` has started; `ready`
    drives /readyz."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        store: Store | None,
        writer: Writer | None,
        spans: Spans | None = None,
    ) -> None:
        self.settings, self.metrics, self.store, self.writer = settings, metrics, store, writer
        self.spans = spans
        proxy = settings.proxy
        connector = aiohttp.TCPConnector(limit=proxy.pool_limit, limit_per_host=0)
        timeout = aiohttp.ClientTimeout(
            total=None, connect=proxy.connect_timeout_s, sock_connect=proxy.connect_timeout_s
        )
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, trust_env=False
        )
        routing = settings.routing
        default = Upstream(URL(routing.upstream), routing.deployment)
        self.router = Router(default, routing.routes, random.Random())
        self.sampler = Sampler(settings.sampler)
        # A drain ends when the model server behind the default upstream has restarted.
        watched = (default.url.host or "", default.url.port or 80)
        self.drain = Drain(settings.drain_settle_s, settings.grace_s, watched)
        self.proxy = Proxy(
            proxy, self.session, self.router.pick, self.on_record, time.perf_counter,
            random.Random(), should_sample=self.sampler.should_sample if writer else None,
            on_answer=self.on_answer if writer else None, refusing=lambda: self.drain.refusing,
            # Twice the sampler's cap: it still sees that a longer answer was cut, and marks it.
            answer_chars=2 * settings.sampler.max_chars,
        )  # fmt: skip
        self.ready = False
        self.records = 0
        self.listeners: list[Listener] = []
        self.addresses: dict[str, str] = {}
        self.tasks: set[asyncio.Future[dict[str, Any]]] = set()
        self.stopping = asyncio.Event()

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
        if self.spans is not None:
            self.spans.emit(record)
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

    async def sampled_written(self) -> None:
        """Wait (up to grace_s) for the answers being redacted: their rows reach the writer."""
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=self.settings.grace_s)

    async def unready(self) -> None:
        """/readyz says 503 from now on; a drain in progress ends."""
        self.ready = False
        await self.drain.close()


SERVICE = web.AppKey("service", Service)


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerPlace:
    """One of `fathom serve --workers N`'s proxy processes: its number, its admin server's
    Unix socket, and the Unix socket of the parent's store engine ('' when not embedded)."""

    index: int
    admin: str
    engine: str = ""


@contextlib.asynccontextmanager
async def running(settings: Settings, place: WorkerPlace | None = None) -> AsyncIterator[Service]:
    """A started service; leaving the block drains and stops it (the SIGTERM path)."""
    async with contextlib.AsyncExitStack() as stack:
        metrics, spans = telemetry(settings.metrics, os.environ)
        # Last: the proxy has stopped, so its final records' metrics and spans go out too.
        stack.push_async_callback(shut_down, metrics, spans)
        # The embedded engine in a child process: its inserts never stall the loop's clock.
        engine = Place(shared=place.engine if place else "")
        store = None if settings.store == "none" else open_store(settings.store, True, engine)
        if store is not None:
            stack.callback(store.close)
        writer = None
        if store is not None:
            writer = await stack.enter_async_context(_writing(store, settings, metrics))
        service = Service(settings, metrics, store, writer, spans)
        stack.callback(lambda: log.info("stopped after %d records", service.records))
        stack.push_async_callback(service.sampled_written)
        await stack.enter_async_context(service.session)
        await stack.enter_async_context(_listening(service, place))
        if settings.probes:
            await stack.enter_async_context(_probing(service))
        stack.push_async_callback(service.unready)
        # Everything allocated so far lives for the whole process: keep it out of the
        # collector's full passes, which would otherwise pause streams for milliseconds.
        gc.freeze()
        service.ready = True
        yield service


@contextlib.asynccontextmanager
async def _writing(store: Store, settings: Settings, metrics: Metrics) -> AsyncIterator[Writer]:
    """Bring the schema up (embedded) or check it (server), then run the writer; on exit it
    puts what it holds in the store, or in the spool.

    A server store's schema belongs to `fathom schema apply` alone: DDL from every sidecar
    would create single-server tables on whichever cluster node it reached first. An
    unreachable store only means spooling; a reachable one that is behind stops the start.
    """
    writer = Writer(store, settings.writer)
    try:
        try:
            if store.url.kind == "chdb" and not settings.schema_check_only:
                applied = await store.call(apply_schema)
                if applied:
                    log.info("schema at %s: applied %s", store.url.safe, ", ".join(applied))
            else:
                await store.call(require)
        except SchemaBehind:
            raise
        except StoreError as exc:
            log.warning("%s: records will be spooled until the store answers", exc)
        await writer.start()
        metrics.observe(_writer_gauges(writer))
        yield writer
    finally:
        await writer.stop(settings.grace_s)


@contextlib.asynccontextmanager
async def _listening(service: Service, place: WorkerPlace | None) -> AsyncIterator[None]:
    """The proxy, then the admin server, listening; on exit the proxy stops first: it waits
    for the streams in flight, while /metrics and /readyz still answer."""
    settings = service.settings
    admin_address = place.admin if place else settings.admin_addr
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
    header_timeout_s = settings.proxy.header_timeout_s
    async with contextlib.AsyncExitStack() as admin, contextlib.AsyncExitStack() as proxy:
        for name, stack, app, address in (
            ("proxy", proxy, proxy_app, settings.proxy.listen_addr),
            ("admin", admin, admin_app, admin_address),
        ):
            # aiohttp's keep-alive timer also runs while headers arrive: the header timeout.
            runner = await stack.enter_async_context(serving(
                app, address, backlog=1024, reuse_port=place is not None, access_log=None,
                handler_cancellation=True, shutdown_timeout=settings.grace_s,
                keepalive_timeout=header_timeout_s,
            ))  # fmt: skip
            bound = runner.addresses[0]
            service.addresses[name] = (
                f"unix:{bound}" if isinstance(bound, str) else f"http://{bound[0]}:{bound[1]}"
            )
        yield


@contextlib.asynccontextmanager
async def _probing(service: Service) -> AsyncIterator[None]:
    """The probe worker in this process, sharing the embedded store; its re-asks go through
    the proxy. On exit it finishes the sample in hand, for up to grace_s."""
    from fathom.probing import probe_gauges, run_in_process
    from probes.worker import WorkerStats

    if service.store is None:
        raise ConfigError("--probes needs a store: the worker reads samples from it")
    stats = WorkerStats()
    target = service.addresses["proxy"]
    coro = run_in_process(service.store, service.settings, target, service.stopping, stats=stats)
    async with background(coro, service.stopping, service.settings.grace_s, "fathom-probes"):
        service.metrics.observe(probe_gauges(stats))
        yield


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
