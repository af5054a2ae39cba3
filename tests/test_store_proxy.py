"""`fathom serve` processes writing to the embedded store: every record kept, through outages."""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from fathom import spawn
from sidecar.sse import SSEParser, classify
from sidecar.store.client import open_store
from sidecar.wire import REQUEST_ID_HEADER
from tests.test_store_writer import set_immutable

INSTANT = {"x-sim-ttft-ms": "0", "x-sim-itl-ms": "0"}


@dataclass
class Seen:
    """What the client saw of one request."""

    status: int
    stream: bool
    output_tokens: int
    latency_s: float


def serve(upstream: str, store: Path, spool: Path) -> spawn.Child:
    argv = spawn.fathom_command(
        "serve", "--upstream", upstream, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
        "--store", f"chdb://{store}",
    )  # fmt: skip
    # No sampling: every row the writer counts is then a `requests` row.
    env = {
        "FATHOM_SPOOL_DIR": str(spool),
        "FATHOM_WRITER_FLUSH_S": "0.2",
        "FATHOM_SAMPLE_RATE": "0",
    }
    return spawn.start(argv, ["proxy", "admin"], env)


@pytest.fixture
def paths(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    yield tmp_path / "store", tmp_path / "spool"


async def one(session: aiohttp.ClientSession, base: str, i: int, seen: dict[str, Seen]) -> None:
    """One request, every tenth streamed; note what the client got."""
    stream = i % 10 == 0
    body = {"model": "sim", "messages": [{"role": "user", "content": f"q{i}"}], "stream": stream}
    headers = {**INSTANT, "x-sim-tokens": str(1 + i % 7)}
    start = asyncio.get_running_loop().time()
    async with session.post(base + "/v1/chat/completions", json=body, headers=headers) as resp:
        data = await resp.read()
        request_id = resp.headers[REQUEST_ID_HEADER]
        status = resp.status
    latency = asyncio.get_running_loop().time() - start
    if stream:
        events = SSEParser().feed(data, 0.0)
        tokens = sum(classify(e.data).content for e in events)
    else:
        tokens = json.loads(data)["usage"]["completion_tokens"]
    seen[request_id] = Seen(status, stream, tokens, latency)


async def drive(base: str, count: int, seen: dict[str, Seen], start: int = 0) -> None:
    """`count` requests, 32 at a time."""
    connector = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(connector=connector) as session:
        queue = iter(range(start, start + count))

        async def worker() -> None:
            for i in queue:
                await one(session, base, i, seen)

        await asyncio.gather(*(worker() for _ in range(32)))


def stored(store: Path) -> dict[str, tuple[int, int, int, str]]:
    opened = open_store(f"chdb://{store}")
    try:
        rows = opened.query_sync(
            "SELECT request_id, status, stream, output_tokens, tokens_source FROM fathom.requests"
        )
        assert len(rows) == len({r[0] for r in rows}), "a request was stored twice"
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}
    finally:
        opened.close()


async def metric(admin: str, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(admin + "/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_ten_thousand_requests_ten_thousand_rows(
    simulator: str, paths: tuple[Path, Path]
) -> None:
    store, spool = paths
    proxy = serve(simulator, store, spool)
    seen: dict[str, Seen] = {}
    try:
        await drive(proxy.addresses["proxy"], 10_000, seen)
    finally:
        assert proxy.stop(signal.SIGTERM) == 0
    rows = stored(store)
    assert len(seen) == 10_000 and set(rows) == set(seen)
    for request_id, client in seen.items():
        status, stream, tokens, source = rows[request_id]
        assert (status, bool(stream), tokens, source) == (
            client.status, client.stream, client.output_tokens, "usage",
        )  # fmt: skip


def table_dirs(store: Path) -> list[str]:
    """Every table's data directory of an embedded store (Atomic databases keep them here)."""
    return [str(p) for p in (store / "store").glob("*/*") if p.is_dir()]


async def test_store_outage_loses_nothing_and_costs_no_latency(
    simulator: str, paths: tuple[Path, Path]
) -> None:
    store, spool = paths
    proxy = serve(simulator, store, spool)
    admin = proxy.addresses["admin"]
    phases: dict[str, dict[str, Seen]] = {"before": {}, "outage": {}, "after": {}}
    try:
        await drive(proxy.addresses["proxy"], 1500, phases["before"])
        dirs = table_dirs(store)
        set_immutable(dirs, True)
        try:
            await drive(proxy.addresses["proxy"], 1500, phases["outage"], start=1500)
            for _ in range(200):
                if await metric(admin, "fathom_writer_rows_spooled_total") > 0:
                    break
                await asyncio.sleep(0.05)
            assert await metric(admin, "fathom_writer_rows_spooled_total") > 0
        finally:
            set_immutable(dirs, False)
        await drive(proxy.addresses["proxy"], 1500, phases["after"], start=3000)
        for _ in range(400):  # the writer retries every 5 s
            if await metric(admin, "fathom_writer_spool_bytes") == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        assert proxy.stop(signal.SIGTERM) == 0
    rows = stored(store)
    every = {rid for phase in phases.values() for rid in phase}
    assert len(every) == 4500 and set(rows) == every
    before = statistics.median(s.latency_s for s in phases["before"].values())
    during = statistics.median(s.latency_s for s in phases["outage"].values())
    assert during < before * 1.5 + 0.002, (before, during)


async def test_kill_9_mid_outage_then_restart_replays(
    simulator: str, paths: tuple[Path, Path]
) -> None:
    store, spool = paths
    first = serve(simulator, store, spool)
    seen: dict[str, Seen] = {}
    await drive(first.addresses["proxy"], 500, seen)
    dirs = table_dirs(store)
    set_immutable(dirs, True)
    try:
        await drive(first.addresses["proxy"], 700, seen, start=500)
        admin = first.addresses["admin"]
        for _ in range(400):  # kill only once every record is in the store or the spool
            written = await metric(admin, "fathom_writer_rows_written_total")
            if written + await metric(admin, "fathom_writer_rows_spooled_total") == 1200:
                break
            await asyncio.sleep(0.05)
    finally:
        first.stop(signal.SIGKILL)
        set_immutable(dirs, False)
    assert any(spool.glob("*.jsonl"))
    second = serve(simulator, store, spool)
    try:
        for _ in range(400):
            if not any(spool.glob("*.jsonl")):
                break
            await asyncio.sleep(0.05)
    finally:
        assert second.stop(signal.SIGTERM) == 0
    assert set(stored(store)) == set(seen)
