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
from sidecar.wire import REQUEST_ID_HEADER
from tests.support import processes
from tests.support.outages import store_outage
from tests.support.polling import until
from tests.support.scrape import counters_reach, figures, metric, page
from tests.support.store import opened

INSTANT = {"x-sim-ttft-ms": "0", "x-sim-itl-ms": "0"}


@dataclass
class Seen:
    """What the client saw of one request."""

    status: int
    stream: bool
    output_tokens: int
    latency_s: float


def serve(upstream: str, store: Path, spool: Path) -> spawn.Child:
    """`fathom serve`, flushing every 0.2 s; no sampling: every row the writer counts is then
    a `requests` row."""
    return processes.serve(
        upstream, store, spool, FATHOM_WRITER_FLUSH_S="0.2", FATHOM_SAMPLE_RATE="0"
    )


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
    with opened(store) as reading:
        rows = reading.query_sync(
            "SELECT request_id, status, stream, output_tokens, tokens_source FROM fathom.requests"
        )
    assert len(rows) == len({r[0] for r in rows}), "a request was stored twice"
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


async def spool_empty(admin: str) -> bool:
    """Whether the proxy at `admin` has nothing left in its spool."""
    return await metric(admin, "fathom_writer_spool_bytes") == 0


async def rows_kept(admin: str, rows: int) -> bool:
    """Whether the proxy at `admin` has all of `rows` rows in the store or in its spool."""
    seen = figures(await page(admin))
    kept = [seen.get(f"fathom_writer_rows_{how}_total", 0.0) for how in ("written", "spooled")]
    return sum(kept) == rows


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


async def test_store_outage_loses_nothing_and_costs_no_latency(
    simulator: str, paths: tuple[Path, Path]
) -> None:
    store, spool = paths
    proxy = serve(simulator, store, spool)
    admin = proxy.addresses["admin"]
    phases: dict[str, dict[str, Seen]] = {"before": {}, "outage": {}, "after": {}}
    try:
        await drive(proxy.addresses["proxy"], 1500, phases["before"])
        with store_outage(store):
            await drive(proxy.addresses["proxy"], 1500, phases["outage"], start=1500)
            await counters_reach(admin, {"fathom_writer_rows_spooled_total": 1}, within=10.0)
        await drive(proxy.addresses["proxy"], 1500, phases["after"], start=3000)
        # The writer's retries back off to one every 30 s.
        await until(lambda: spool_empty(admin), within=45.0, what="spool replayed")
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
    with store_outage(store):
        try:
            await drive(first.addresses["proxy"], 700, seen, start=500)
            # Kill only once every record is in the store or the spool.
            admin = first.addresses["admin"]
            await until(lambda: rows_kept(admin, 1200), within=20.0, what="1200 rows kept")
        finally:
            first.stop(signal.SIGKILL)
    assert any(spool.glob("*.jsonl"))
    second = serve(simulator, store, spool)
    try:
        await until(lambda: not any(spool.glob("*.jsonl")), within=45.0, what="spool replayed")
    finally:
        assert second.stop(signal.SIGTERM) == 0
    assert set(stored(store)) == set(seen)
