"""The embedded engine in a child process (what `fathom serve` runs), on the real chDB engine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

from sidecar.record import REQUEST_COLUMNS, Record
from sidecar.store.client import Place, StoreError, open_store
from sidecar.store.engine import ENGINE_NICE
from sidecar.store.schema import apply_schema
from tests.support.records import request_values
from tests.support.store import opened, url


def rows(n: int, prefix: str) -> list[list[object]]:
    now = datetime.now(UTC)
    records = (Record(ts=now, request_id=f"{prefix}{i}", route="chat", e2e_ms=i) for i in range(n))
    return [request_values(r) for r in records]


def engines(parent: psutil.Process | None = None) -> list[psutil.Process]:
    """Engine processes started by `parent` (this one by default); other children are ignored."""
    children = (parent or psutil.Process()).children()
    return [c for c in children if "sidecar.store.engine" in " ".join(c.cmdline())]


def engine_pid() -> int:
    [child] = engines()
    return child.pid


def test_rows_round_trip_through_the_child_in_slices(tmp_path: Path) -> None:
    with opened(tmp_path / "db", schema=True, isolated=True) as store:
        # 2,500 rows travel as three pickled slices and land as one insert, once per token.
        batch = rows(2500, "r")
        store.insert_sync("fathom.requests", REQUEST_COLUMNS, batch, token="t1")
        store.insert_sync("fathom.requests", REQUEST_COLUMNS, batch, token="t1")
        got = store.query_sync(
            "SELECT count(), uniqExact(request_id), sum(e2e_ms) FROM fathom.requests"
        )
        assert got == [(2500, 2500, sum(range(2500)))]
        # The rollup the view feeds saw the batch once too.
        assert store.query_sync("SELECT countMerge(requests) FROM fathom.requests_1m") == [(2500,)]
        assert store.query_sync("SELECT {x:UInt8} + 1", {"x": 41}) == [(42,)]
    assert not engines()  # close() waited for the child


def test_a_dead_child_is_a_store_error_then_a_new_child(tmp_path: Path) -> None:
    with opened(tmp_path / "db", schema=True, isolated=True) as store:
        store.insert_sync("fathom.requests", REQUEST_COLUMNS, rows(10, "a"))
        first = engine_pid()
        os.kill(first, signal.SIGKILL)
        psutil.Process(first).wait(10)
        with pytest.raises(StoreError, match="engine process is gone"):
            store.insert_sync("fathom.requests", REQUEST_COLUMNS, rows(10, "b"))
        # The next call starts a new engine on the same path; what was written is there.
        store.insert_sync("fathom.requests", REQUEST_COLUMNS, rows(10, "c"))
        assert engine_pid() != first
        assert store.query_sync("SELECT count() FROM fathom.requests") == [(20,)]


def test_the_child_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from sidecar.store.client import open_store\n"
        f"store = open_store('chdb://{tmp_path / 'db'}', isolated=True)\n"
        "store.query_sync('SELECT 1')\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline() == "ready\n"
        [child] = engines(psutil.Process(parent.pid))
        parent.kill()
        parent.wait(10)
        # End of file on its socket: the child closes the engine and exits by itself.
        child.wait(10)  # psutil.TimeoutExpired if it lingers
        assert not child.is_running()
    finally:
        parent.kill()
        parent.wait()
    # The path is free again: a new process can open it at once.
    with opened(tmp_path / "db", isolated=True) as store:
        assert store.query_sync("SELECT 1") == [(1,)]


def test_an_unopenable_path_says_so(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = open_store(f"chdb://{blocker / 'db'}", isolated=True)
    try:
        with pytest.raises(StoreError, match="unreachable at chdb://"):
            store.query_sync("SELECT 1")
    finally:
        store.close()


def test_the_engine_yields_the_core_to_the_proxy(tmp_path: Path) -> None:
    with opened(tmp_path / "db", isolated=True) as store:
        store.query_sync("SELECT 1")
        pid = engine_pid()
        assert os.sched_getscheduler(pid) == os.SCHED_BATCH
        assert psutil.Process(pid).nice() == min(19, psutil.Process().nice() + ENGINE_NICE)


def test_the_engine_caches_are_bounded_for_a_sidecar(tmp_path: Path) -> None:
    # ClickHouse's own defaults are sized for a server: 5 GiB each for marks and indexes.
    with opened(tmp_path / "db", isolated=True) as store:
        got = dict(store.query_sync(
            "SELECT name, toUInt64(value) FROM system.server_settings WHERE name IN "
            "('mark_cache_size', 'primary_index_cache_size', 'index_mark_cache_size', "
            "'uncompressed_cache_size', 'compiled_expression_cache_size', "
            "'query_condition_cache_size')"
        ))  # fmt: skip
    assert got == {"mark_cache_size": 64 << 20, "primary_index_cache_size": 64 << 20,
                   "index_mark_cache_size": 16 << 20, "uncompressed_cache_size": 0,
                   "compiled_expression_cache_size": 16 << 20,
                   "query_condition_cache_size": 16 << 20}  # fmt: skip


def test_other_processes_share_the_one_engine_over_its_socket_across_a_restart(
    tmp_path: Path,
) -> None:
    """What `fathom serve --workers N` runs: the parent's engine, each worker a client of it."""
    sock = str(tmp_path / "engine.sock")
    db = url(tmp_path / "db")
    owner = open_store(db, True, Place(listen=sock))
    worker = open_store(db, False, Place(shared=sock))
    try:
        apply_schema(owner)
        worker.insert_sync("fathom.requests", REQUEST_COLUMNS, rows(10, "w"), token="t1")
        worker.insert_sync("fathom.requests", REQUEST_COLUMNS, rows(10, "w"), token="t1")
        assert owner.query_sync("SELECT count() FROM fathom.requests") == [(10,)]
        first = engine_pid()
        os.kill(first, signal.SIGKILL)
        psutil.Process(first).wait(10)
        with pytest.raises(StoreError, match="engine process is gone"):
            worker.insert_sync("fathom.requests", REQUEST_COLUMNS, rows(5, "x"))
        with pytest.raises(StoreError, match="engine process is gone"):
            owner.query_sync("SELECT 1")
        # The owner's next call starts a new engine on the same socket; the worker reconnects.
        assert owner.query_sync("SELECT count() FROM fathom.requests") == [(10,)]
        worker.insert_sync("fathom.requests", REQUEST_COLUMNS, rows(5, "x"))
        assert worker.query_sync("SELECT count() FROM fathom.requests") == [(15,)]
    finally:
        worker.close()
        owner.close()
    assert not engines()
