"""Store URLs and the one store everything in a process shares.

`chdb:///abs/path` is the embedded ClickHouse engine (one process owns a path);
`http(s)://user:pass@host:8123/fathom` is a ClickHouse server or cluster. Every blocking
call runs on one dedicated thread, so the event loop never waits on it and the embedded
engine is only ever entered from one thread. `isolated=True` runs the embedded engine in a
child process (see sidecar.store.engine): what `fathom serve` does. Rows bound for that child
are pickled on a second thread first, so one batch is packed while the child inserts another.
`Place` says where the engine of `fathom serve --workers N` is: the parent's child process
listens on a Unix socket, and each proxy process's store is a client of it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.exceptions import ClickHouseError

from sidecar.store.engine import (
    ChildEngine,
    Engine,
    InProcess,
    SharedEngine,
    embedded_client,
    pack,
    short,
)
from sidecar.store.engine import RowsRejected as RowsRejected
from sidecar.store.engine import StoreError as StoreError

T = TypeVar("T")
DATABASE = "fathom"
URL_FORMS = "use chdb:///path or http://user:pass@host:8123/fathom"


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A parsed store URL. `safe` is the form that may be logged (no password)."""

    kind: str  # 'chdb' or 'http'
    path: str = ""
    host: str = ""
    port: int = 0
    username: str = "default"
    password: str = field(default="", repr=False)
    secure: bool = False

    @property
    def safe(self) -> str:
        """The URL without its password."""
        if self.kind == "chdb":
            return f"chdb://{self.path}"
        scheme = "https" if self.secure else "http"
        return f"{scheme}://{self.username}@{self.host}:{self.port}/{DATABASE}"


def parse_store_url(url: str) -> StoreURL:
    """Read a store URL, or say what a valid one looks like (never echoing a password)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # e.g. a port that is not a number
        raise StoreError(f"store URL is not valid ({exc}): {URL_FORMS}") from None
    if parts.scheme == "chdb":
        raw = unquote((parts.netloc + parts.path) if parts.netloc else parts.path)
        if not raw:
            raise StoreError("chdb store URL needs a path: chdb:///var/lib/fathom or chdb://./data")
        return StoreURL("chdb", path=str(Path(raw).expanduser().resolve()))
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise StoreError(f"store URL has no host: {URL_FORMS}")
        database = parts.path.strip("/")
        if database not in ("", DATABASE):
            raise StoreError(f"store database must be '{DATABASE}' (got '{database}')")
        secure = parts.scheme == "https"
        return StoreURL(
            "http",
            host=parts.hostname,
            port=port or (8443 if secure else 8123),
            username=unquote(parts.username or "default"),
            password=unquote(parts.password or ""),
            secure=secure,
        )
    raise StoreError(f"unsupported store URL scheme '{parts.scheme}': {URL_FORMS}")


@dataclass(frozen=True, slots=True)
class Place:
    """Where an embedded engine runs beyond this process: `listen` (the owner opens its engine
    process listening on this Unix socket) or `shared` (this process uses that one)."""

    listen: str = ""
    shared: str = ""


class Store:
    """One engine behind one thread; async and blocking forms of each call."""

    def __init__(self, url: StoreURL, isolated: bool = False, place: Place = Place()) -> None:
        self.url = url
        self._place = place if url.kind == "chdb" else Place()
        # Rows for another process's engine are packed here, as for our own child's.
        self._isolated = (isolated or bool(self._place.shared)) and url.kind == "chdb"
        self._thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="fathom-store", initializer=self._mark_thread
        )
        self._packer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fathom-pack")
        self._thread_id = -1
        self._engine: Engine | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"Store({self.url.safe})"

    def _mark_thread(self) -> None:
        self._thread_id = threading.get_ident()

    def _connect(self) -> Engine:
        if self._engine is None:
            self._engine = _engine_for(self.url, self._isolated, self._place)
        return self._engine

    def _call(self, what: str, op: str, *args: Any) -> Any:
        if threading.get_ident() != self._thread_id:
            # Blocking callers on other threads still enter the engine from the store's thread.
            if self._closed:
                raise StoreError(f"{what} failed: the store at {self.url.safe} is closed")
            return self._thread.submit(self._call, what, op, *args).result()
        engine = self._connect()  # StoreError: unreachable, said as such
        try:
            return engine.run(op, *args)
        except RowsRejected:
            raise
        except StoreError as exc:
            if not engine.alive:
                self._engine = None  # a child that died is started again on the next call
            raise StoreError(f"{what} failed at {self.url.safe}: {exc}") from exc

    async def call(self, fn: Callable[[Store], T]) -> T:
        """Run `fn(store)` (which may use the blocking methods) on the store's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, self)

    def query_sync(
        self, sql: str, parameters: Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Rows of a SELECT, parameters bound server-side ({name:Type})."""
        rows: list[tuple[Any, ...]] = self._call("query", "query", sql, dict(parameters or {}))
        return rows

    def command_sync(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Run a statement that returns no rows."""
        self._call("command", "command", sql, dict(parameters or {}))

    def insert_sync(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        token: str = "",
    ) -> None:
        """Insert rows; a non-empty `token` makes a repeated insert of the same batch a no-op."""
        self._call(f"insert into {table}", "insert", table, columns, rows, token)

    async def _run(
        self, fn: Callable[..., T], *args: Any, on: concurrent.futures.Executor | None = None
    ) -> T:
        """`fn(*args)` on the store's thread (or `on`), unless the store is closed."""
        if self._closed:
            raise StoreError(f"the store at {self.url.safe} is closed")
        return await asyncio.get_running_loop().run_in_executor(on or self._thread, fn, *args)

    async def query(
        self, sql: str, parameters: Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """`query_sync` on the store's thread."""
        return await self._run(self.query_sync, sql, parameters)

    async def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        """`command_sync` on the store's thread."""
        await self._run(self.command_sync, sql, parameters)

    async def insert(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], token: str = ""
    ) -> None:
        """`insert_sync` on the store's thread (rows for a child engine packed beforehand)."""
        if not self._isolated:
            await self._run(self.insert_sync, table, columns, rows, token)
            return
        packed = await self._run(pack, rows, on=self._packer)
        what = f"insert into {table}"
        await self._run(self._call, what, "insert_packed", table, columns, packed, token)

    def close(self) -> None:
        """Close the engine and stop the thread (waits for the call in flight); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._thread.submit(self._close_engine).result()
        self._thread.shutdown(wait=True)
        self._packer.shutdown(wait=True)

    def _close_engine(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


def _engine_for(url: StoreURL, isolated: bool, place: Place) -> Engine:
    """The embedded engine at a path (here, in a child process, or in another process's
    child), or an HTTP server."""
    try:
        if url.kind == "chdb" and place.shared:
            return SharedEngine(place.shared)
        if url.kind == "chdb":
            Path(url.path).mkdir(parents=True, exist_ok=True)
            if isolated:
                return ChildEngine(url.path, place.listen)
            # Clients on one path share the process's single engine; another path raises.
            return InProcess(embedded_client(url.path))
        return InProcess(clickhouse_connect.get_client(
            host=url.host, port=url.port, username=url.username, password=url.password,
            secure=url.secure, connect_timeout=5, send_receive_timeout=60,
        ))  # fmt: skip
    except (ClickHouseError, OSError) as exc:
        raise StoreError(f"store unreachable at {url.safe}: {short(exc)}") from exc
    except StoreError as exc:
        raise StoreError(f"store unreachable at {url.safe}: {exc}") from exc


def open_store(url: str, isolated: bool = False, place: Place = Place()) -> Store:
    """A Store for `url` (connects lazily, on first use); see `Store` for `isolated`, `Place`."""
    return Store(parse_store_url(url), isolated, place)
