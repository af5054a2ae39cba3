"""Shared fixtures: a real simulator process and an in-process proxy whose records we keep."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fathom import spawn
from fathom.service import Service, running
from fathom.settings import build
from sidecar.record import Record
from sidecar.store.client import Store, open_store
from sidecar.store.schema import apply_schema

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """An embedded store in this test's directory, with the schema applied (a module that
    needs another kind of store defines its own `store`)."""
    opened = open_store(f"chdb://{tmp_path / 'db'}")
    apply_schema(opened)
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def simulator_process() -> Iterator[spawn.Child]:
    """A `fathom simulate` process: model 'sim', 30 ms TTFT, 10 ms ITL, 8 tokens."""
    argv = spawn.fathom_command(
        "simulate", "--listen", "127.0.0.1:0", "--model", "sim", "--ttft-ms", "30",
        "--itl-ms", "10", "--tokens", "8", "--log-level", "WARNING",
    )  # fmt: skip
    with spawn.running(argv, ["server"]) as child:
        yield child


@pytest.fixture(scope="session")
def simulator(simulator_process: spawn.Child) -> str:
    """Base URL of the session's simulator."""
    return simulator_process.addresses["server"]


class Proxied:
    """An in-process proxy plus every record it produced, by request id."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.url = service.addresses["proxy"]
        self.records: dict[str, Record] = {}

    def record(self, request_id: str) -> Record:
        return self.records[request_id]


@contextlib.asynccontextmanager
async def proxied(upstream: str, **overrides: object) -> AsyncIterator[Proxied]:
    """Run a proxy in front of `upstream` with test settings; keep its records."""
    base = {"upstream": upstream, "listen": "127.0.0.1:0", "admin": "127.0.0.1:0", "store": "none"}
    settings = build(**(base | overrides))
    async with running(settings) as service:
        out = Proxied(service)
        service.listeners.append(lambda record: out.records.__setitem__(record.request_id, record))
        yield out
