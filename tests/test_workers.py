"""`fathom serve --workers 2` with real processes: a simulator upstream, the real `openai`
client opening a new connection per request (so the kernel spreads them over the workers), the
one embedded store read back after serve has exited."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import openai
import psutil
import pytest

from fathom import settings as fathom_settings
from fathom import spawn
from fathom.workers import adopt_spools
from sidecar.store.spool import Batch, Spool
from tests.support.polling import until
from tests.support.processes import serve, simulate_command
from tests.support.scrape import figures, page
from tests.support.store import opened

REQUESTS = 60
PER_WORKER = "fathom_worker_requests_total"
MESSAGES: list[dict[str, str]] = [{"role": "user", "content": "hi"}]


@pytest.fixture
def upstream() -> Iterator[str]:
    """A simulator whose streams last about half a second (8 events, 60 ms apart)."""
    argv = simulate_command("--model", "sim", "--ttft-ms", "20", "--itl-ms", "60", "--tokens", "8")
    with spawn.running(argv, ["server"]) as child:
        yield child.addresses["server"]


def client(proxy: str) -> openai.AsyncOpenAI:
    """An openai client of its own: its requests come on a connection of their own."""
    return openai.AsyncOpenAI(base_url=proxy + "/v1", api_key="test", max_retries=0)


async def ask(api: openai.AsyncOpenAI, stream: bool) -> tuple[str, str]:
    """One chat request; (its Fathom request id, the answer)."""
    raw = await api.chat.completions.with_raw_response.create(
        model="sim",
        messages=MESSAGES,
        stream=stream,  # type: ignore[arg-type]
    )
    request_id = raw.headers["x-fathom-request-id"]
    if not stream:
        return request_id, raw.parse().choices[0].message.content or ""  # type: ignore[union-attr]
    parts = [c.choices[0].delta.content or "" async for c in raw.parse() if c.choices]  # type: ignore[union-attr]
    return request_id, "".join(parts)


def stored(store_dir: Path) -> dict[str, int]:
    """Rows per request id in fathom.requests."""
    with opened(store_dir) as store:
        rows = store.query_sync(
            "SELECT request_id, count() FROM fathom.requests GROUP BY request_id"
        )
    return {str(request_id): int(n) for request_id, n in rows}


def workers_of(child: spawn.Child) -> list[psutil.Process]:
    """The worker processes of a `fathom serve --workers N` parent (not its store engine)."""
    kids = psutil.Process(child.process.pid).children()
    return [p for p in kids if "--multiprocessing-fork" in p.cmdline()]


async def many_requests(proxy: str) -> set[str]:
    """REQUESTS requests, 12 at a time, half of them streamed; their request ids."""
    slots = asyncio.Semaphore(12)

    async def one(i: int) -> tuple[str, str]:
        async with slots, client(proxy) as api:
            return await ask(api, stream=i % 2 == 0)

    answers = await asyncio.gather(*(one(i) for i in range(REQUESTS)))
    assert all(answer for _, answer in answers)
    return {request_id for request_id, _ in answers}


async def check_metrics(admin: str) -> None:
    """The parent's /metrics: every worker's requests, summed, and each worker's share."""
    text = await page(admin)
    metrics = figures(text)
    assert metrics["gen_ai_client_operation_duration_seconds_count"] == REQUESTS
    # 30 streams of 8 content events: 7 gaps each, binned by every worker's ChunkGaps.
    assert metrics["gen_ai_client_operation_time_per_output_chunk_seconds_count"] == 30 * 7
    per_worker = [line for line in text.splitlines() if line.startswith(PER_WORKER)]
    assert len(per_worker) == 2
    assert all(float(line.rsplit(" ", 1)[1]) > 0 for line in per_worker), per_worker
    assert metrics[PER_WORKER] == REQUESTS


async def test_two_workers_share_the_load_store_rows_once_and_drain_on_sigterm(
    upstream: str, tmp_path: Path, children: list[spawn.Child]
) -> None:
    store, spool = tmp_path / "store", tmp_path / "spool"
    fathom = serve(upstream, store, spool, "--workers", "2", FATHOM_GRACE_S="20")
    children.append(fathom)
    assert len(workers_of(fathom)) == 2
    ids = await many_requests(fathom.addresses["proxy"])
    assert len(ids) == REQUESTS
    await check_metrics(fathom.addresses["admin"])

    apis = [client(fathom.addresses["proxy"]) for _ in range(8)]
    streams = []
    for api in apis:
        raw = await api.chat.completions.with_raw_response.create(
            model="sim", messages=MESSAGES, stream=True  # type: ignore[arg-type]
        )  # fmt: skip
        streams.append((raw.headers["x-fathom-request-id"], raw.parse()))

    async def finish(stream: openai.AsyncStream[object]) -> int:
        return len([chunk async for chunk in stream])

    reading = [asyncio.create_task(finish(s)) for _, s in streams]  # type: ignore[arg-type]
    # Every stream has its response headers: each is in flight in some worker now.
    fathom.process.send_signal(signal.SIGTERM)
    counts = await asyncio.gather(*reading)
    for api in apis:
        await api.close()
    assert all(n >= 8 for n in counts), counts
    await until(lambda: fathom.process.poll() is not None, within=30.0, what="serve exits")
    assert fathom.process.returncode == 0
    assert stored(store) == dict.fromkeys(ids | {request_id for request_id, _ in streams}, 1)


async def test_one_admin_port_answers_for_all_and_a_dead_worker_stops_serve(
    upstream: str, tmp_path: Path, children: list[spawn.Child]
) -> None:
    store, spool = tmp_path / "store", tmp_path / "spool"
    fathom = serve(upstream, store, spool, "--workers", "2", FATHOM_DRAIN_SETTLE_S="0")
    children.append(fathom)
    admin = fathom.addresses["admin"]
    async with aiohttp.ClientSession() as session:
        async with session.get(admin + "/readyz") as resp:
            assert (resp.status, await resp.json()) == (200, {"ready": True, "workers": [True] * 2})
        async with session.get(admin + "/drain") as resp:
            drained = await resp.json()
        assert (drained["drained"], drained["in_flight"]) == (True, 0)
        async with session.get(admin + "/readyz") as resp:
            assert (resp.status, (await resp.json())["drain"]) == (503, "drained")
        async with session.get(admin + "/healthz") as resp:
            assert resp.status == 200

    victim = workers_of(fathom)[1]
    victim.kill()
    await until(lambda: fathom.process.poll() is not None, within=30.0, what="serve exits")
    assert fathom.process.returncode == 1
    await until(lambda: any("exited with code -9" in line for line in fathom.output), within=5.0)
    said = next(line for line in fathom.output if "fathom serve: worker" in line)
    assert f"(pid {victim.pid}) exited with code -9" in said


def spool_batch(directory: Path, rows: int) -> str:
    """Spool one batch of `rows` rows in `directory`; its token."""
    spool = Spool(directory, 10**6)
    try:
        batch = Batch("fathom.requests", ("request_id",), [(f"r{i}",) for i in range(rows)])
        spool.put(batch)
        return batch.token
    finally:
        spool.close()


def spooled(directory: Path) -> dict[str, int]:
    """Token -> rows of the batches spooled in `directory`."""
    spool = Spool(directory, 10**6)
    try:
        return {spool.load(f).token: f.rows for f in spool.files()}
    finally:
        spool.close()


def test_spools_of_workers_beyond_the_count_go_to_the_ones_that_run(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    own = spool_batch(root, 2)
    one, two, three = (spool_batch(root / f"worker-{i}", i) for i in (1, 2, 3))
    settings = fathom_settings.build(spool_dir=str(root))

    adopt_spools(settings, 2)  # worker-2 -> worker 0 (spool_dir), worker-3 -> worker-1
    assert spooled(root) == {own: 2, two: 2}
    assert spooled(root / "worker-1") == {one: 1, three: 3}
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["worker-1"]

    adopt_spools(settings, 1)  # back to one process: everything in spool_dir
    assert spooled(root) == {own: 2, two: 2, one: 1, three: 3}
    assert not [p for p in root.iterdir() if p.is_dir()]
