"""`fathom serve`: wires settings, proxy, metrics and store together and runs them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import uvloop
from aiohttp import web
from yarl import URL

from sidecar import config
from sidecar.config import ConfigError, Settings
from sidecar.metrics import Metrics
from sidecar.proxy import Proxy
from sidecar.record import Record
from sidecar.routing import Router, Upstream

log = logging.getLogger("fathom.serve")


@dataclass(slots=True)
class Service:
    """Everything one `fathom serve` process runs; `ready` drives /readyz."""

    settings: Settings
    metrics: Metrics
    session: aiohttp.ClientSession
    proxy: Proxy
    ready: bool = False
    records: int = 0
    listeners: list[Callable[[Record], None]] = field(default_factory=list)
    runners: list[web.AppRunner] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)


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
    uvloop.run(serve_until_signalled(settings))
    return 0


async def serve_until_signalled(settings: Settings) -> None:
    """Serve; on SIGTERM or SIGINT stop accepting, let streams finish, flush, return."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings) as service:
        for name, address in service.addresses.items():
            print(f"{name} listening on {address}", flush=True)
        await stop.wait()
        log.info("stopping: draining in-flight requests for up to %.0f s", settings.grace_s)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Service]:
    """A started service; leaving the block drains and stops it (the SIGTERM path)."""
    service = _build(settings)
    try:
        await _start(service)
        service.ready = True
        yield service
    finally:
        service.ready = False
        for runner in service.runners:  # the proxy first: it waits for in-flight streams
            await runner.cleanup()
        await service.session.close()
        service.metrics.shutdown()
        log.info("stopped after %d records", service.records)


def _build(settings: Settings) -> Service:
    metrics = Metrics(settings.provider, settings.model_label_cap)
    connector = aiohttp.TCPConnector(limit=settings.pool_limit, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(
        total=None, connect=settings.connect_timeout_s, sock_connect=settings.connect_timeout_s
    )
    session = aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False, trust_env=False
    )
    default = Upstream(URL(settings.upstream), settings.deployment)
    router = Router(default, settings.routes, random.Random())
    holder: list[Service] = []

    def on_record(record: Record, gaps: list[float]) -> None:
        service = holder[0]
        service.records += 1
        metrics.record(record, gaps)
        for listener in service.listeners:
            listener(record)

    proxy = Proxy(settings, session, router.pick, on_record, time.perf_counter)
    service = Service(settings=settings, metrics=metrics, session=session, proxy=proxy)
    holder.append(service)
    return service


async def _start(service: Service) -> None:
    settings = service.settings
    proxy_app = web.Application()
    proxy_app[SERVICE] = service
    proxy_app.router.add_route("*", "/{tail:.*}", service.proxy.handle)
    admin_app = web.Application()
    admin_app[SERVICE] = service
    admin_app.router.add_get("/metrics", _metrics)
    admin_app.router.add_get("/healthz", _healthz)
    admin_app.router.add_get("/readyz", _readyz)
    for name, app, (host, port) in (
        ("proxy", proxy_app, settings.listen_addr),
        ("admin", admin_app, settings.admin_addr),
    ):
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=settings.grace_s
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        service.runners.append(runner)
        bound = runner.addresses[0]
        service.addresses[name] = f"http://{bound[0]}:{bound[1]}"


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[SERVICE].metrics.exposition()
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    ready = request.app[SERVICE].ready
    return web.json_response({"ready": ready}, status=200 if ready else 503)
