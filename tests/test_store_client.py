"""Store URLs and the shared client, on the real chDB engine (and a real refused HTTP port)."""

from __future__ import annotations

import logging
import re
import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sidecar.record import REQUEST_COLUMNS, Record
from sidecar.store.client import RowsRejected, StoreError, open_store, parse_store_url
from sidecar.store.schema import apply_schema


def test_http_urls_keep_the_password_out_of_every_printable_form() -> None:
    url = parse_store_url("http://fathom:s%40cret@ch.example:8123/fathom")
    assert (url.host, url.port, url.username, url.password) == (
        "ch.example", 8123, "fathom", "s@cret",
    )  # fmt: skip
    assert "cret" not in url.safe and "cret" not in repr(url)
    assert "cret" not in repr(open_store("http://fathom:s3cret@ch.example/fathom"))
    assert parse_store_url("https://ch.example/fathom").port == 8443
    assert parse_store_url("http://ch.example").username == "default"


def test_chdb_urls_resolve_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_store_url("chdb://./rel/db").path == str(tmp_path / "rel" / "db")
    assert parse_store_url("chdb:///abs/db").path == "/abs/db"
    assert parse_store_url("chdb://rel").path == str(tmp_path / "rel")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://x", "unsupported store URL scheme 'ftp': use chdb:///path or http://"),
        ("/var/lib/fathom", "unsupported store URL scheme '': use chdb:///path"),
        ("chdb://", "needs a path"),
        ("http:///fathom", "has no host"),
        ("http://h:8123/other", "must be 'fathom'"),
        ("http://u:p@h:port/fathom", "not valid"),
    ],
)
def test_bad_urls_say_what_a_good_one_looks_like(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        parse_store_url(url)


def test_unreachable_server_error_names_the_store_but_not_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = open_store(f"http://fathom:s3cret@127.0.0.1:{port}/fathom")
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(
            StoreError, match=re.escape(f"unreachable at http://fathom@127.0.0.1:{port}")
        ):
            store.query_sync("SELECT 1")
    finally:
        store.close()
    assert "s3cret" not in caplog.text


def test_chdb_store_creates_its_directory_and_shares_the_engine(tmp_path: Path) -> None:
    path = tmp_path / "new" / "db"
    first, second = open_store(f"chdb://{path}"), open_store(f"chdb://{path}")
    other = open_store(f"chdb://{tmp_path / 'other'}")
    try:
        apply_schema(first)
        assert path.is_dir()
        # Two clients on one path see the same engine: what one creates, the other reads.
        assert ("requests",) in second.query_sync("SHOW TABLES FROM fathom")
        with pytest.raises(StoreError, match="already initialized with path"):
            other.query_sync("SELECT 1")  # one chDB path per process
    finally:
        for store in (other, second, first):
            store.close()


@pytest.mark.parametrize("isolated", [False, True], ids=["in-process", "child-process"])
def test_values_of_the_wrong_type_are_rejected_not_retried(tmp_path: Path, isolated: bool) -> None:
    store = open_store(f"chdb://{tmp_path / 'db'}", isolated)
    try:
        apply_schema(store)
        row = Record(ts=datetime.now(UTC), request_id="x", route="chat").to_row()
        for column, bad in (("status", "two hundred"), ("status", -1), ("e2e_ms", None)):
            values = [bad if c == column else row[c] for c in REQUEST_COLUMNS]
            with pytest.raises(RowsRejected, match=r"insert into fathom\.requests"):
                store.insert_sync("fathom.requests", REQUEST_COLUMNS, [values])
        with pytest.raises(StoreError) as missing:
            store.insert_sync("fathom.nowhere", REQUEST_COLUMNS, [list(row.values())])
        assert not isinstance(missing.value, RowsRejected)  # a missing table may come back
        assert store.query_sync("SELECT count() FROM fathom.requests") == [(0,)]
    finally:
        store.close()


async def test_closed_store_fails_with_a_store_error(tmp_path: Path) -> None:
    store = open_store(f"chdb://{tmp_path / 'db'}")
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        await store.insert("fathom.requests", ["ts"], [[datetime.now(UTC)]])
    with pytest.raises(StoreError, match="closed"):
        store.query_sync("SELECT 1")
