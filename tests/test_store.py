"""The store on the real chDB engine: schema migrations, cluster rendering, the writer."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sidecar.record import Record
from sidecar.store.client import Store, StoreError, open_store, parse_store_url
from sidecar.store.schema import Target, apply, render
from sidecar.store.writer import Spool, Writer, WriterSettings

FAST = {"flush_s": 0.05, "retry_s": 0.1, "batch_rows": 500}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(f"chdb://{tmp_path / 'db'}")
    apply(opened)
    yield opened
    opened.close()


def request_row(i: int) -> dict[str, object]:
    ts = datetime.now(UTC) - timedelta(milliseconds=i)
    return Record(ts=ts, request_id=f"r{i:06d}", route="chat", model="m", ttft_ms=i / 10).to_row()


def request_ids(store: Store) -> list[str]:
    return [r[0] for r in store.query_sync("SELECT request_id FROM fathom.requests")]


def data_dirs(store: Store) -> list[str]:
    rows = store.query_sync("SELECT data_paths FROM system.tables WHERE database = 'fathom'")
    return [p for (paths,) in rows for p in paths]


def set_immutable(paths: list[str], on: bool) -> None:
    """Make the tables' directories unwritable (even for root) or writable again."""
    assert os.geteuid() == 0, "the outage tests make chDB's directories immutable: run as root"
    subprocess.run(["chattr", "+i" if on else "-i", *paths], check=True)


def test_schema_apply_is_idempotent_and_versioned(store: Store) -> None:
    assert apply(store) == []
    versions = store.query_sync("SELECT version, name FROM fathom.schema_migrations")
    assert versions == [(1, "001_init.sql")]
    tables = {r[0] for r in store.query_sync("SHOW TABLES FROM fathom")}
    assert {"requests", "samples", "quality", "regressions", "requests_1m"} <= tables
    ddl = store.query_sync("SHOW CREATE TABLE fathom.samples")[0][0]
    assert "toIntervalDay(7)" in ddl and "PARTITION BY toDate(ts)" in ddl


def test_ttl_overrides_render() -> None:
    target = Target(ttl_days={"requests": 3, "samples": 1, "quality": 9})
    sql = "\n".join(s for m in render(target) for s in m.statements)
    assert "INTERVAL 3 DAY" in sql and "INTERVAL 1 DAY" in sql and "INTERVAL 9 DAY" in sql


def test_cluster_schema_parses_in_chdb(store: Store) -> None:
    statements = [s for m in render(Target(cluster="prod-eu")) for s in m.statements]
    joined = "\n".join(statements)
    assert "ON CLUSTER `prod-eu`" in joined and "ReplicatedMergeTree(" in joined
    assert joined.count("ENGINE = Distributed(") == 5
    for statement in statements:
        store.query_sync("EXPLAIN AST " + statement)  # raises on a syntax error


def test_rollup_view_aggregates_speed(store: Store) -> None:
    rows = [request_row(i) for i in range(100)]
    columns = list(rows[0])
    store.insert_sync("fathom.requests", columns, [[r[c] for c in columns] for r in rows])
    [(count, ttft)] = store.query_sync(
        "SELECT countMerge(requests), quantilesTDigestMerge(0.5, 0.9, 0.95, 0.99)(ttft_ms)[1] "
        "FROM fathom.requests_1m"
    )
    assert count == 100 and 4.0 < ttft < 6.0


def test_store_urls() -> None:
    url = parse_store_url("http://fathom:s3cret@ch.example:8123/fathom")
    assert (url.host, url.port, url.username, url.password) == (
        "ch.example",
        8123,
        "fathom",
        "s3cret",
    )
    assert "s3cret" not in url.safe
    assert parse_store_url("https://ch.example/fathom").port == 8443
    assert parse_store_url("chdb://./rel").path == str(Path("rel").resolve())
    for bad, message in (("ftp://x", "unsupported store URL scheme"), ("chdb://", "needs a path"),
                         ("http://h:8123/other", "must be 'fathom'")):  # fmt: skip
        with pytest.raises(StoreError, match=message):
            parse_store_url(bad)


async def test_writer_writes_each_row_once(store: Store, tmp_path: Path) -> None:
    writer = Writer(store, WriterSettings(spool_dir=str(tmp_path / "spool"), **FAST))
    await writer.start()
    for i in range(2_345):
        assert writer.submit("fathom.requests", request_row(i))
    await writer.stop(10.0)
    ids = request_ids(store)
    assert len(ids) == 2_345 and len(set(ids)) == 2_345
    assert writer.rows_written == 2_345 and writer.queue_depth == 0


async def test_full_queue_drops_and_counts(store: Store, tmp_path: Path) -> None:
    writer = Writer(store, WriterSettings(spool_dir=str(tmp_path / "s"), queue_rows=10, **FAST))
    accepted = [writer.submit("fathom.requests", request_row(i)) for i in range(15)]
    assert accepted == [True] * 10 + [False] * 5
    assert writer.rows_dropped["queue_full"] == 5
    await writer.stop(10.0)
    assert len(request_ids(store)) == 10


async def wait_for(condition: object, seconds: float = 20.0) -> None:
    """Poll `condition()` until true (the writer works on its own schedule)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_outage_spools_then_replays_in_order_exactly_once(
    store: Store, tmp_path: Path
) -> None:
    writer = Writer(store, WriterSettings(spool_dir=str(tmp_path / "spool"), **FAST))
    await writer.start()
    for i in range(1000):
        writer.submit("fathom.requests", request_row(i))
    await wait_for(lambda: writer.rows_written == 1000)
    dirs = data_dirs(store)
    set_immutable(dirs, True)
    try:
        for i in range(1000, 3000):
            assert writer.submit("fathom.requests", request_row(i))  # never blocks nor refuses
            if i % 200 == 0:
                await asyncio.sleep(0.06)
        await wait_for(lambda: writer.rows_spooled == 2000)
        assert not writer.store_up and len(writer.spool.files()) >= 2
    finally:
        set_immutable(dirs, False)
    await wait_for(lambda: not writer.spool.files())
    await writer.stop(10.0)
    ids = request_ids(store)
    assert len(ids) == 3000 and set(ids) == {f"r{i:06d}" for i in range(3000)}
    assert writer.rows_replayed == 2000


async def test_spool_bound_keeps_the_oldest_and_counts_the_rest(tmp_path: Path) -> None:
    down = open_store(f"chdb://{tmp_path / 'never-created-schema'}")  # no tables: inserts fail
    settings = WriterSettings(
        spool_dir=str(tmp_path / "spool"), spool_max_bytes=60_000, flush_s=0.05, batch_rows=100
    )
    writer = Writer(down, settings)
    await writer.start()
    for i in range(900):
        writer.submit("fathom.requests", request_row(i))
        if i % 100 == 99:
            await asyncio.sleep(0.06)  # one batch per flush
    await writer.stop(10.0)
    down.close()
    kept = [r for f in writer.spool.files() for r in writer.spool.load(f).rows]
    assert writer.spool.bytes <= 60_000 and writer.rows_dropped["spool_full"] > 0
    assert len(kept) + writer.rows_dropped["spool_full"] == 900
    assert kept[0][1] == "r000000"  # the oldest stay; what did not fit was dropped and counted


def test_spool_roundtrips_values_exactly(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10**6)
    row = request_row(7)
    columns = tuple(row)
    from sidecar.store.writer import Batch

    spool.put(Batch("fathom.requests", columns, [list(row.values())], token="t"))
    [path] = spool.files()
    back = spool.load(path)
    assert back.rows == [list(row.values())] and back.token == "t" and back.columns == columns


CRASHER = textwrap.dedent(
    """
    import asyncio, sys, time
    from datetime import UTC, datetime
    from sidecar.record import Record
    from sidecar.store.client import open_store
    from sidecar.store.writer import Writer, WriterSettings

    async def main():
        store = open_store(sys.argv[1])  # schema never applied: every insert fails
        writer = Writer(store, WriterSettings(spool_dir=sys.argv[2], flush_s=0.05))
        await writer.start()
        for i in range(1500):
            writer.submit("fathom.requests",
                          Record(ts=datetime.now(UTC), request_id=f"c{i}", route="chat").to_row())
        while writer.rows_spooled < 1500:
            await asyncio.sleep(0.01)
        print("spooled", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_kill_9_then_next_writer_replays_the_spool(store: Store, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    child = subprocess.Popen(  # noqa: ASYNC220 - the child runs beside this test on purpose
        [sys.executable, "-c", CRASHER, f"chdb://{tmp_path / 'elsewhere'}", str(spool)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "spooled"
    finally:
        child.kill()  # SIGKILL: no chance to flush or clean up
        child.wait()
    writer = Writer(store, WriterSettings(spool_dir=str(spool), **FAST))
    await writer.start()
    await wait_for(lambda: not writer.spool.files())
    await writer.stop(10.0)
    ids = request_ids(store)
    assert sorted(ids) == sorted(f"c{i}" for i in range(1500))
