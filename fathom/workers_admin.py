"""The one admin server of `fathom serve --workers N`, in the parent: each endpoint asks every
worker's own admin server (on its private Unix socket) and answers for all of them.

/metrics merges the workers' expositions (sidecar.metrics_merge) and answers 503 when a worker
does not answer: a partial sum would look to Prometheus like counters going back. /readyz is
200 only while every worker is ready. /drain drains every worker at once (sidecar.drain) and
returns when all have. /healthz is 200 while every worker process runs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
from aiohttp import web

from sidecar.metrics_merge import merge

BASE = "http://worker"  # the host is ignored: each session's connector names its socket
SCRAPE_S = 10.0


class Workers:
    """A client of each worker's admin socket; `alive()` says whether every process runs."""

    def __init__(self, sockets: Sequence[str], alive: Callable[[], bool]) -> None:
        self.sessions = [
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) for path in sockets
        ]
        self.alive = alive

    async def get(self, path: str, timeout_s: float | None) -> list[tuple[int, str]]:
        """GET `path` of every worker at once: (status, body) each; status 0 if it failed."""
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        return list(await asyncio.gather(*(_get(s, path, timeout) for s in self.sessions)))

    async def close(self) -> None:
        """Close the clients."""
        for session in self.sessions:
            await session.close()


async def _get(
    session: aiohttp.ClientSession, path: str, limit: aiohttp.ClientTimeout
) -> tuple[int, str]:
    try:
        async with session.get(BASE + path, timeout=limit) as response:
            return response.status, await response.text()
    except (aiohttp.ClientError, OSError, TimeoutError):
        return 0, ""


WORKERS = web.AppKey("workers", Workers)


def admin_app(workers: Workers) -> web.Application:
    """The parent's admin application (the caller closes `workers` after it)."""
    app = web.Application()
    app[WORKERS] = workers
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/drain", _drain)
    return app


async def _metrics(request: web.Request) -> web.Response:
    answers = await request.app[WORKERS].get("/metrics", SCRAPE_S)
    silent = [str(i) for i, (status, _) in enumerate(answers) if status != 200]
    if silent:
        text = f"worker {', '.join(silent)} did not answer /metrics; scrape again shortly\n"
        return web.Response(status=503, text=text)
    body = merge([text for _, text in answers])
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


async def _healthz(request: web.Request) -> web.Response:
    alive = request.app[WORKERS].alive()
    return web.json_response(
        {"status": "ok" if alive else "worker down"}, status=200 if alive else 503
    )


async def _readyz(request: web.Request) -> web.Response:
    answers = await request.app[WORKERS].get("/readyz", SCRAPE_S)
    states = [_json(text) for _, text in answers]
    ready = all(status == 200 for status, _ in answers)
    body: dict[str, Any] = {"ready": ready, "workers": [bool(s.get("ready")) for s in states]}
    if phase := next((s["drain"] for s in states if s.get("drain")), ""):
        body["drain"] = phase
    return web.json_response(body, status=200 if ready else 503)


async def _drain(request: web.Request) -> web.Response:
    """Every worker's drain, at once: drained when all are; in flight summed."""
    answers = [_json(text) for _, text in await request.app[WORKERS].get("/drain", None)]
    return web.json_response({
        "drained": all(a.get("drained", False) for a in answers),
        "in_flight": sum(int(a.get("in_flight", 0)) for a in answers),
        "waited_s": max((float(a.get("waited_s", 0.0)) for a in answers), default=0.0),
    })  # fmt: skip


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
