"""The batch writer and its spool against the real chDB engine: real outages, real kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fathom.spawn import free_port
from sidecar.store.client import Store, StoreError, open_store
from sidecar.store.spool import Batch, Spool, SpoolError
from sidecar.store.writer import Writer, WriterSettings
from tests.support.outages import can_make_immutable, directories, set_immutable
from tests.support.polling import until
from tests.support.records import request_row
from tests.support.store import opened

ROOT = Path(__file__).resolve().parent.parent


def fast(tmp_path: Path, **overrides: Any) -> WriterSettings:
    """Test timings: 50 ms flushes and retries, 500-row batches."""
    base: dict[str, Any] = {
        "spool_dir": str(tmp_path / "spool"), "flush_s": 0.05, "retry_s": 0.05,
        "retry_max_s": 0.2, "batch_rows": 500,
    }  # fmt: skip
    return WriterSettings(**(base | overrides))


def request_ids(store: Store) -> list[str]:
    return [r[0] for r in store.query_sync("SELECT request_id FROM fathom.requests")]


def rollup_count(store: Store) -> int:
    """Requests in the rollups, which must all hold each request exactly once."""
    (count,) = {
        int(store.query_sync(f"SELECT {column} FROM fathom.{table}")[0][0])
        for table, column in (
            ("requests_1m", "countMerge(requests)"),
            ("speed_1m", "sum(requests)"),
            ("speed_1h", "sum(requests)"),
        )
    }
    return count


@contextlib.asynccontextmanager
async def loop_lag() -> AsyncIterator[list[float]]:
    """The longest the event loop went without running a 10 ms ticker, in seconds."""
    worst = [0.0]
    loop = asyncio.get_running_loop()

    async def tick() -> None:
        while True:
            before = loop.time()
            await asyncio.sleep(0.01)
            worst[0] = max(worst[0], loop.time() - before - 0.01)

    task = asyncio.create_task(tick())
    try:
        yield worst
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_writes_each_row_exactly_once(store: Store, tmp_path: Path) -> None:
    writer = Writer(store, fast(tmp_path))
    await writer.start()
    for i in range(2_345):
        assert writer.submit("fathom.requests", request_row(i))
        if i % 3 == 0:
            sample = {"ts": datetime.now(UTC), "request_id": f"r{i:06d}", "model": "m"}
            assert writer.submit("fathom.samples", sample)
    await writer.stop(10.0)
    ids = request_ids(store)
    assert len(ids) == 2_345 and len(set(ids)) == 2_345 and rollup_count(store) == 2_345
    assert store.query_sync("SELECT count() FROM fathom.samples") == [(782,)]
    assert (writer.rows_written, writer.queue_depth, writer.rows_spooled) == (2_345 + 782, 0, 0)


async def test_a_backlog_goes_in_fewer_larger_inserts(store: Store, tmp_path: Path) -> None:
    sizes: list[int] = []

    class Counted:
        async def insert(
            self, table: str, columns: Sequence[str], rows: Sequence[Any], token: str = ""
        ) -> None:
            sizes.append(len(rows))
            await store.insert(table, columns, rows, token)

    writer = Writer(Counted(), fast(tmp_path, insert_max_rows=1500, flush_s=60.0))
    await writer.start()
    # Submitted without yielding: four full batches wait when the writer first runs. The
    # first two go alone (two inserts are in flight before the store has taken one), then
    # the backlog joins.
    for i in range(2_250):
        writer.submit("fathom.requests", request_row(i))
    await until(lambda: writer.rows_written == 2_000)
    await writer.stop(10.0)
    assert sizes == [500, 500, 1000, 250]
    assert sorted(request_ids(store)) == [f"r{i:06d}" for i in range(2_250)]
    assert rollup_count(store) == 2_250


async def test_full_queue_drops_counts_and_names_the_setting(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = Writer(store, fast(tmp_path, queue_rows=10))
    accepted = [writer.submit("fathom.requests", request_row(i)) for i in range(15)]
    assert accepted == [True] * 10 + [False] * 5
    assert writer.rows_dropped == {"queue_full": 5} and writer.queue_depth == 10
    await writer.stop(10.0)  # never started: stop still drains
    assert len(request_ids(store)) == 10
    assert not writer.submit("fathom.requests", request_row(99))
    assert writer.rows_dropped["writer_stopped"] == 1
    # The first drop is told at once, the rest when the interval is over (here: at stop).
    hint = "writer queue full (writer_queue_rows=10); raise FATHOM_WRITER_QUEUE_ROWS"
    assert f"dropped 1 row: {hint}" in caplog.text and f"dropped 4 rows: {hint}" in caplog.text


@pytest.mark.parametrize("outage", ["table detached", "disk unwritable"])
async def test_outage_spools_then_replays_every_row_once(
    store: Store, tmp_path: Path, outage: str
) -> None:
    if outage == "disk unwritable" and not can_make_immutable(tmp_path):
        pytest.skip("needs root and chattr to make chDB's directories unwritable")
    writer = Writer(store, fast(tmp_path))
    await writer.start()
    for i in range(1000):
        writer.submit("fathom.requests", request_row(i))
    await until(lambda: writer.rows_written == 1000)
    dirs = directories(tmp_path / "db")  # the `store` fixture's
    if outage == "table detached":
        await store.command("DETACH TABLE fathom.requests")
    else:
        set_immutable(dirs, True)
    try:
        async with loop_lag() as lag:
            for i in range(1000, 3000):
                assert writer.submit("fathom.requests", request_row(i))  # never refuses
                if i % 250 == 0:
                    await asyncio.sleep(0)  # let the writer run between bursts
            await until(lambda: writer.rows_spooled == 2000)
        # Four 500-row batches; the first failed insert may have joined two of them.
        assert not writer.store_up and len(writer.spool) >= 3 and writer.spool_bytes > 0
        assert lag[0] < 1.0
    finally:
        if outage == "table detached":
            await store.command("ATTACH TABLE fathom.requests")
        else:
            set_immutable(dirs, False)
    await until(lambda: len(writer.spool) == 0)
    await writer.stop(10.0)
    ids = request_ids(store)
    assert len(ids) == 3000 and set(ids) == {f"r{i:06d}" for i in range(3000)}
    assert rollup_count(store) == 3000
    assert (writer.rows_replayed, writer.spool_bytes, sum(writer.rows_dropped.values())) == (
        2000, 0, 0,
    )  # fmt: skip


async def test_a_server_refusing_connections_loses_nothing(store: Store, tmp_path: Path) -> None:
    """A ClickHouse server URL that refuses connections: rows spool, and replay elsewhere."""
    refused = open_store(f"http://127.0.0.1:{free_port()}/fathom")
    writer = Writer(refused, fast(tmp_path))
    await writer.start()
    try:
        async with loop_lag() as lag:
            for i in range(1_600):
                assert writer.submit("fathom.requests", request_row(i))
                if i % 400 == 0:
                    await asyncio.sleep(0)
            await until(lambda: writer.rows_spooled == 1_600)
        await writer.stop(10.0)
    finally:
        refused.close()
    assert not writer.store_up and lag[0] < 1.0 and not writer.rows_dropped
    # The spool holds no trace of where it was bound: the next writer replays it into chDB.
    replayer = Writer(store, fast(tmp_path))
    await replayer.start()
    await until(lambda: len(replayer.spool) == 0)
    await replayer.stop(10.0)
    assert sorted(request_ids(store)) == [f"r{i:06d}" for i in range(1_600)]


async def test_batch_inserted_just_before_a_crash_is_not_stored_twice(
    store: Store, tmp_path: Path
) -> None:
    # The crash window: the insert reached the store, the spool file was not yet deleted.
    spool = Spool(tmp_path / "spool", 10**8)
    rows = [request_row(i) for i in range(700)]
    batch = Batch("fathom.requests", tuple(rows[0]), [list(r.values()) for r in rows])
    spool.put(batch)
    await store.insert(batch.table, batch.columns, batch.rows, batch.token)
    spool.close()
    writer = Writer(store, fast(tmp_path))
    await writer.start()
    await until(lambda: len(writer.spool) == 0)
    await writer.stop(10.0)
    assert writer.rows_replayed == 700  # sent again, and deduplicated by its token
    assert sorted(request_ids(store)) == [f"r{i:06d}" for i in range(700)]
    assert rollup_count(store) == 700


async def test_store_that_hangs_never_blocks_submit_and_stop_spools(
    store: Store, tmp_path: Path
) -> None:
    writer = Writer(store, fast(tmp_path))
    await writer.start()
    loop = asyncio.get_running_loop()
    # The store's one thread is busy for 2 s: every insert waits behind this query.
    hang = asyncio.ensure_future(store.query("SELECT sleepEachRow(0.5) FROM numbers(4)"))
    await asyncio.sleep(0)
    async with loop_lag() as lag:
        started = loop.time()
        assert all(writer.submit("fathom.requests", request_row(i)) for i in range(1500))
        await writer.stop(0.3)
        stopped_after = loop.time() - started
    assert stopped_after < 1.5 and not hang.done() and lag[0] < 0.5
    assert (writer.rows_spooled, writer.rows_written) == (1500, 0)
    await hang  # the cancelled insert may still land now: the replay must not double it
    second = Writer(store, fast(tmp_path))
    await second.start()
    await until(lambda: len(second.spool) == 0)
    await second.stop(10.0)
    assert sorted(request_ids(store)) == [f"r{i:06d}" for i in range(1500)]


async def test_a_bad_value_loses_only_its_own_row(store: Store, tmp_path: Path) -> None:
    writer = Writer(store, fast(tmp_path, batch_rows=1000))
    await writer.start()
    for i in range(1000):
        row = request_row(i)
        if i == 437:
            row["status"] = "two hundred"  # a bug upstream of the writer
        writer.submit("fathom.requests", row)
    await writer.stop(10.0)
    assert writer.rows_dropped == {"rejected": 1} and writer.store_up
    assert sorted(request_ids(store)) == [f"r{i:06d}" for i in range(1000) if i != 437]


async def test_a_factory_is_retried_until_it_gives_a_store(store: Store, tmp_path: Path) -> None:
    calls = []

    def factory() -> Store:
        calls.append(1)
        if len(calls) < 3:
            raise StoreError("store not reachable yet")
        return store

    writer = Writer(factory, fast(tmp_path))
    await writer.start()
    for i in range(1200):
        writer.submit("fathom.requests", request_row(i))
    await until(lambda: writer.rows_written == 1200)
    await writer.stop(10.0)
    assert len(calls) == 3 and writer.rows_spooled > 0
    assert sorted(request_ids(store)) == [f"r{i:06d}" for i in range(1200)]


def test_spool_bound_drops_the_oldest_batches_and_counts_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 100_000)
    evicted_rows = 0
    for b in range(12):
        rows: list[Sequence[Any]] = [list(request_row(b * 100 + i).values()) for i in range(100)]
        kept, evicted = spool.put(Batch("fathom.requests", ("x",) * len(rows[0]), rows))
        assert kept
        evicted_rows += evicted
    files = spool.files()
    kept_rows = sum(f.rows for f in files)
    assert kept_rows + evicted_rows == 1200 and evicted_rows > 0
    assert spool.bytes == sum(f.path.stat().st_size for f in files) <= 100_000
    first = spool.load(files[0]).rows[0][1]
    assert first == f"r{1200 - kept_rows:06d}"  # the newest are kept, in order
    huge: list[Sequence[Any]] = [list(request_row(i).values()) for i in range(1000)]
    assert spool.put(Batch("fathom.requests", ("x",) * len(huge[0]), huge)) == (False, 0)
    spool.close()


async def test_writer_counts_what_the_spool_bound_drops(tmp_path: Path) -> None:
    closed = open_store(f"chdb://{tmp_path / 'db'}")
    closed.close()  # a closed client: every insert fails
    writer = Writer(closed, fast(tmp_path, batch_rows=100, spool_max_bytes=100_000))
    await writer.start()
    for i in range(1200):
        assert writer.submit("fathom.requests", request_row(i))
    await writer.stop(10.0)
    kept = sum(f.rows for f in writer.spool.files())
    assert writer.rows_spooled == 1200 and kept + writer.rows_dropped["spool_full"] == 1200
    assert writer.spool_bytes <= 100_000 and not writer.store_up


def test_one_writer_per_spool_directory(tmp_path: Path) -> None:
    first = Spool(tmp_path / "spool", 10**6)
    with pytest.raises(SpoolError, match="in use by another writer"):
        Spool(tmp_path / "spool", 10**6)
    first.close()
    Spool(tmp_path / "spool", 10**6).close()


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.characters(codec=None)),  # surrogates, U+2028, controls, NUL
    st.sampled_from(["\u2028", "\x1c\r\n", "\ud800", '{"$t": "2020-01-01T00:00:00"}']),
    st.datetimes(timezones=st.just(UTC)),
)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.lists(VALUES, min_size=3, max_size=3), min_size=1, max_size=5))
def test_spool_round_trips_values_exactly(rows: list[Sequence[Any]], tmp_path_factory: Any) -> None:
    spool = Spool(tmp_path_factory.mktemp("spool"), 10**7)
    try:
        spool.put(Batch("fathom.t", ("a", "b", "c"), rows, token="tok"))
        [spooled] = spool.files()
        back = spool.load(spooled)
    finally:
        spool.close()
    assert (back.table, back.columns, back.token) == ("fathom.t", ("a", "b", "c"), "tok")
    for got_row, want_row in zip(back.rows, rows, strict=True):
        for got, want in zip(got_row, want_row, strict=True):
            assert type(got) is type(want)
            if isinstance(want, float) and math.isnan(want):
                assert math.isnan(got)
            elif isinstance(want, datetime):  # `fold` means nothing at a fixed UTC offset
                assert (got.isoformat(), got.tzinfo) == (want.isoformat(), want.tzinfo)
            else:
                assert repr(got) == repr(want)  # -0.0, tz and microseconds included


CRASHER = textwrap.dedent(
    """
    import asyncio, sys
    from sidecar.store.client import open_store
    from sidecar.store.writer import Writer, WriterSettings
    from tests.support.records import request_row

    async def main():
        store = open_store(sys.argv[1])  # schema not applied yet: every insert fails
        writer = Writer(store, WriterSettings(spool_dir=sys.argv[2], flush_s=0.05,
                                              batch_rows=500, retry_s=60))
        await writer.start()
        for i in range(1500):
            writer.submit("fathom.requests", request_row(i, "c"))
        while writer.rows_spooled < 1500:
            await asyncio.sleep(0.01)
        print("spooled", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_kill_9_then_the_next_writer_replays_the_spool(tmp_path: Path) -> None:
    url, spool = f"chdb://{tmp_path / 'db'}", tmp_path / "spool"
    child = subprocess.Popen(  # noqa: ASYNC220 - the child runs beside this test on purpose
        [sys.executable, "-c", CRASHER, url, str(spool)], cwd=ROOT, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        line = await asyncio.to_thread(child.stdout.readline)
        assert line.strip() == "spooled"
    finally:
        child.kill()  # SIGKILL: no chance to flush or clean up
        await asyncio.to_thread(child.wait)
    # The same data directory, as after a restart.
    with opened(tmp_path / "db", schema=True) as store:
        writer = Writer(store, fast(tmp_path))
        assert writer.spool_bytes > 0 and len(writer.spool) == 3
        await writer.start()
        await until(lambda: len(writer.spool) == 0)
        await writer.stop(10.0)
        assert sorted(request_ids(store)) == [f"c{i:06d}" for i in range(1500)]


async def test_drops_are_logged_at_most_once_per_interval(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    writer = Writer(store, fast(tmp_path, queue_rows=1, log_every_s=10.0), clock=lambda: now[0])
    caplog.set_level(logging.WARNING, "fathom.writer")
    writer.submit("fathom.requests", request_row(0))
    for i in range(1, 50):
        writer.submit("fathom.requests", request_row(i))
    now[0] = 11.0
    writer.submit("fathom.requests", request_row(50))
    messages = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert [m.split(":")[0] for m in messages] == ["dropped 1 row", "dropped 49 rows"]
    await writer.stop(10.0)


async def test_identical_rows_in_two_batches_are_both_kept(store: Store, tmp_path: Path) -> None:
    # Each batch has its own token: ClickHouse's default deduplication by content would
    # otherwise drop a second batch that happens to hold the same bytes.
    row = request_row(1)
    writer = Writer(store, fast(tmp_path, batch_rows=1))
    await writer.start()
    for _ in range(2):
        writer.submit("fathom.requests", row)
    await writer.stop(10.0)
    assert request_ids(store) == ["r000001", "r000001"]


async def test_a_row_submitted_as_the_drain_ends_is_spooled_not_lost(
    store: Store, tmp_path: Path
) -> None:
    writer = Writer(store, fast(tmp_path))
    await writer.start()
    writer.submit("fathom.requests", request_row(0))
    assert writer._task is not None
    # Runs after the final drain, before stop() resumes: the row arrives too late to insert.
    late: list[bool] = []
    writer._task.add_done_callback(
        lambda _: late.append(writer.submit("fathom.requests", request_row(1)))
    )
    await writer.stop(10.0)
    assert late == [True] and writer.rows_written == 1 and writer.rows_spooled == 1
    assert [f.rows for f in writer.spool.files()] == [1] and writer.queue_depth == 0


async def test_ephemeral_spool_is_replayed_at_exit_or_counted_as_dropped(
    store: Store, tmp_path: Path
) -> None:
    """spool_ephemeral: the spool dies with the pod, so stop() hands it to the store or counts."""
    writer = Writer(store, fast(tmp_path, spool_ephemeral=True, retry_s=60, retry_max_s=60))
    await writer.start()
    await store.command("DETACH TABLE fathom.requests")
    for i in range(700):
        writer.submit("fathom.requests", request_row(i))
    await until(lambda: writer.rows_spooled == 700)
    await store.command("ATTACH TABLE fathom.requests")  # back, but no retry due for a minute
    await writer.stop(10.0)
    assert len(request_ids(store)) == 700 and writer.rows_replayed == 700
    assert sum(writer.rows_dropped.values()) == 0

    down = open_store(f"http://127.0.0.1:{free_port()}/fathom")
    writer = Writer(down, fast(tmp_path, spool_dir=str(tmp_path / "gone"), spool_ephemeral=True))
    await writer.start()
    for i in range(300):
        writer.submit("fathom.requests", request_row(i))
    await writer.stop(1.0)
    down.close()
    assert writer.rows_spooled == 300 and writer.rows_dropped == {"spool_ephemeral": 300}
