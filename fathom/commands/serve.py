"""`fathom serve`: the proxy in front of an upstream, until SIGTERM or SIGINT (fathom.service
starts and stops its parts; with `--workers N`, fathom.workers runs N of them)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import uvloop

from fathom import settings as fathom_settings
from fathom import workers
from fathom.service import Listener, running
from fathom.settings import Settings
from sidecar.config import ConfigError
from sidecar.store.client import StoreError
from sidecar.store.spool import SpoolError

log = logging.getLogger("fathom.serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `fathom serve`."""
    fathom_settings.add_arguments(parser)
    parser.add_argument(
        "--probes", action="store_true", default=None, help="also run the probe worker in-process"
    )


def run(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT, then drain; exit 0 on a clean stop, 2 on bad settings, 1
    when one of several workers died."""
    try:
        settings = fathom_settings.load(args)
        if not settings.routing.upstream:
            raise ConfigError("no upstream: pass --upstream URL or set FATHOM_UPSTREAM")
    except ConfigError as exc:
        print(f"fathom serve: {exc}", file=sys.stderr)
        return 2
    try:
        n = workers.count(settings.workers)
        if settings.store != "none":
            workers.adopt_spools(settings, n)
        if n > 1:
            workers.run(settings, n)
        else:
            uvloop.run(serve_until_signalled(settings))
    except (SpoolError, StoreError, ConfigError) as exc:
        print(f"fathom serve: {exc}", file=sys.stderr)
        return 2
    except workers.WorkerCrashed as exc:
        print(f"fathom serve: {exc}", file=sys.stderr)
        return 1
    return 0


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
