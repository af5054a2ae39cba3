"""How a process starts and stops its long-running parts: one async context manager per part,
entered in order on a contextlib.AsyncExitStack, so that leaving the stack (a signal, the end
of a test, a part that failed to start) stops what was started, in reverse order.

`fathom serve` (fathom.service.running) and `fathom probe` (fathom.commands.probe) build their
stacks from these parts and from the probe worker's own (probes.worker.probe_worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from aiohttp import web

log = logging.getLogger("fathom")
T = TypeVar("T")


@contextlib.asynccontextmanager
async def serving(
    app: web.Application,
    address: tuple[str, int] | str,
    backlog: int = 128,
    reuse_port: bool = False,
    **options: Any,
) -> AsyncIterator[web.AppRunner]:
    """`app` listening at (host, port) or on a Unix socket path (with `reuse_port`, beside
    other processes on the same port); on exit its runner is cleaned up, which waits for the
    requests in flight (up to the runner's `shutdown_timeout`)."""
    runner = web.AppRunner(app, **options)
    await runner.setup()
    try:
        site: web.BaseSite
        if isinstance(address, str):
            site = web.UnixSite(runner, address, backlog=backlog)
        else:
            site = web.TCPSite(runner, *address, backlog=backlog, reuse_port=reuse_port or None)
        await site.start()
        yield runner
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def background(
    coro: Coroutine[Any, Any, T], stop: asyncio.Event, grace_s: float | None, name: str
) -> AsyncIterator[asyncio.Task[T]]:
    """`coro` as a task. On exit `stop` is set and the task gets `grace_s` to finish (None:
    as long as it takes); a task still running then is cancelled, and awaited either way.
    The task reports its own failures (the body may await it, or the coroutine logs them)."""
    task = asyncio.create_task(coro, name=name)
    try:
        yield task
    finally:
        stop.set()
        done, _ = await asyncio.wait({task}, timeout=grace_s)
        if not done:
            log.warning("%s still running after %.0f s: cancelled", name, grace_s or 0)
            task.cancel()
        await asyncio.wait({task})
