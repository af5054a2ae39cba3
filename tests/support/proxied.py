"""An in-process `fathom serve` in front of an upstream, keeping every record it produced."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fathom.service import Service, running
from fathom.settings import build
from sidecar.record import Record


class Proxied:
    """An in-process proxy plus every record it produced, by request id."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.url = service.addresses["proxy"]
        self.records: dict[str, Record] = {}

    def record(self, request_id: str) -> Record:
        """The record of one request."""
        return self.records[request_id]


@contextlib.asynccontextmanager
async def proxied(upstream: str, **overrides: Any) -> AsyncIterator[Proxied]:
    """Run a proxy in front of `upstream` with test settings; keep its records."""
    base = {"upstream": upstream, "listen": "127.0.0.1:0", "admin": "127.0.0.1:0", "store": "none"}
    settings = build(**(base | overrides))
    async with running(settings) as service:
        out = Proxied(service)
        service.listeners.append(lambda record: out.records.__setitem__(record.request_id, record))
        yield out
