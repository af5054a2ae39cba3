"""Store URLs and the one client everything in a process shares.

`chdb:///abs/path` is the embedded ClickHouse engine (one process owns a path);
`http(s)://user:pass@host:8123/fathom` is a ClickHouse server or cluster. Every blocking
clickhouse-connect call runs on one dedicated thread, so the event loop never waits on it
and the embedded engine is only ever entered from one thread.
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
from clickhouse_connect.driver.exceptions import ClickHouseError, DataError

T = TypeVar("T")
DATABASE = "fathom"
URL_FORMS = "use chdb:///path or http://user:pass@host:8123/fathom"


class StoreError(RuntimeError):
    """The store is unusable or refused an operation; the message says which store and why."""


class RowsRejected(StoreError):
    """The rows themselves cannot be stored (a value of the wrong type): retrying cannot help."""


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


class Store:
    """One clickhouse-connect client behind one thread; async and blocking forms of each call."""

    def __init__(self, url: StoreURL) -> None:
        self.url = url
        self._thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="fathom-store", initializer=self._mark_thread
        )
        self._thread_id = -1
        self._client: Any = None
        self._closed = False

    def __repr__(self) -> str:
        return f"Store({self.url.safe})"

    def _mark_thread(self) -> None:
        self._thread_id = threading.get_ident()

    def _connect(self) -> Any:
        if self._client is None:
            try:
                self._client = _client_for(self.url)
            except (ClickHouseError, OSError) as exc:
                raise StoreError(f"store unreachable at {self.url.safe}: {_short(exc)}") from exc
        return self._client

    def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        if threading.get_ident() != self._thread_id:
            # Blocking callers on other threads still enter the engine from the store's thread.
            if self._closed:
                raise StoreError(f"{what} failed: the store at {self.url.safe} is closed")
            return self._thread.submit(self._call, what, fn).result()
        try:
            return fn(self._connect())
        except (ClickHouseError, OSError) as exc:
            raise StoreError(f"{what} failed at {self.url.safe}: {_short(exc)}") from exc

    async def call(self, fn: Callable[[Store], T]) -> T:
        """Run `fn(store)` (which may use the blocking methods) on the store's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, self)

    def query_sync(
        self, sql: str, parameters: Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Rows of a SELECT, parameters bound server-side ({name:Type})."""
        result = self._call("query", lambda c: c.query(sql, parameters=dict(parameters or {})))
        return [tuple(row) for row in result.result_rows]

    def command_sync(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Run a statement that returns no rows."""
        self._call("command", lambda c: c.command(sql, parameters=dict(parameters or {})))

    def insert_sync(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        token: str = "",
    ) -> None:
        """Insert rows; a non-empty `token` makes a repeated insert of the same batch a no-op."""
        settings = {"insert_deduplication_token": token} if token else {}

        def insert(client: Any) -> None:
            try:
                client.insert(table, rows, column_names=list(columns), settings=settings)
            except DataError as exc:  # raised while encoding our rows, before anything is sent
                raise RowsRejected(f"insert into {table}: {_short(exc)}") from exc
            except (TypeError, ValueError, AttributeError) as exc:
                # clickhouse-connect's encoders raise these for a value of the wrong type
                raise RowsRejected(f"insert into {table}: {type(exc).__name__}: {exc}") from exc

        self._call(f"insert into {table}", insert)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreError(f"the store at {self.url.safe} is closed")
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

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
        """`insert_sync` on the store's thread."""
        await self._run(self.insert_sync, table, columns, rows, token)

    def close(self) -> None:
        """Close the client and stop the thread (waits for the call in flight); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._thread.submit(self._close_client).result()
        self._thread.shutdown(wait=True)

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _client_for(url: StoreURL) -> Any:
    """A clickhouse-connect client: the embedded engine at a path, or an HTTP server."""
    if url.kind == "chdb":
        Path(url.path).mkdir(parents=True, exist_ok=True)
        # Clients on one path share the process's single engine; another path raises.
        return clickhouse_connect.get_client(dsn=f"chdb://{url.path}")
    return clickhouse_connect.get_client(
        host=url.host, port=url.port, username=url.username, password=url.password,
        secure=url.secure, connect_timeout=5, send_receive_timeout=60,
    )  # fmt: skip


def open_store(url: str) -> Store:
    """A Store for `url` (connects lazily, on first use)."""
    return Store(parse_store_url(url))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
