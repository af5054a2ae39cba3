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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.exceptions import ClickHouseError

T = TypeVar("T")
DATABASE = "fathom"


class StoreError(RuntimeError):
    """The store is unusable or refused an operation; the message says which store and why."""


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A parsed store URL. `safe` is the form that may be logged (no password)."""

    kind: str  # 'chdb' or 'http'
    path: str = ""
    host: str = ""
    port: int = 0
    username: str = "default"
    password: str = ""
    secure: bool = False

    @property
    def safe(self) -> str:
        """The URL without its password."""
        if self.kind == "chdb":
            return f"chdb://{self.path}"
        scheme = "https" if self.secure else "http"
        return f"{scheme}://{self.username}@{self.host}:{self.port}/{DATABASE}"


def parse_store_url(url: str) -> StoreURL:
    """Read a store URL, or say what a valid one looks like."""
    parts = urlsplit(url)
    if parts.scheme == "chdb":
        raw = unquote((parts.netloc + parts.path) if parts.netloc else parts.path)
        if not raw:
            raise StoreError("chdb store URL needs a path: chdb:///var/lib/fathom or chdb://./data")
        return StoreURL("chdb", path=str(Path(raw).expanduser().resolve()))
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise StoreError(f"store URL {url!r} has no host: http://user:pass@host:8123/fathom")
        database = parts.path.strip("/")
        if database not in ("", DATABASE):
            raise StoreError(f"store database must be '{DATABASE}' (got '{database}')")
        secure = parts.scheme == "https"
        return StoreURL(
            "http",
            host=parts.hostname,
            port=parts.port or (8443 if secure else 8123),
            username=unquote(parts.username or "default"),
            password=unquote(parts.password or ""),
            secure=secure,
        )
    raise StoreError(
        f"unsupported store URL scheme '{parts.scheme}': "
        "use chdb:///path or http://user:pass@host:8123/fathom"
    )


class Store:
    """One clickhouse-connect client behind one thread; async and blocking forms of each call."""

    def __init__(self, url: StoreURL) -> None:
        self.url = url
        self._thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="fathom-store", initializer=self._mark_thread
        )
        self._thread_id = -1
        self._client: Any = None

    def _mark_thread(self) -> None:
        self._thread_id = threading.get_ident()

    def _connect(self) -> Any:
        if self._client is None:
            try:
                if self.url.kind == "chdb":
                    Path(self.url.path).mkdir(parents=True, exist_ok=True)
                    self._client = clickhouse_connect.get_client(dsn=f"chdb://{self.url.path}")
                else:
                    self._client = clickhouse_connect.get_client(
                        host=self.url.host, port=self.url.port, username=self.url.username,
                        password=self.url.password, secure=self.url.secure,
                        connect_timeout=5, send_receive_timeout=60,
                    )  # fmt: skip
            except (ClickHouseError, OSError) as exc:
                raise StoreError(f"store unreachable at {self.url.safe}: {exc}") from exc
        return self._client

    def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        if threading.get_ident() != self._thread_id:
            # Blocking callers on other threads still enter the engine from the store's thread.
            return self._thread.submit(self._call, what, fn).result()
        try:
            return fn(self._connect())
        except ClickHouseError as exc:
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
        self._call(
            f"insert into {table}",
            lambda c: c.insert(table, rows, column_names=list(columns), settings=settings),
        )

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
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
        """Close the client and stop the thread (waits for the call in flight)."""
        self._thread.submit(self._close_client).result()
        self._thread.shutdown(wait=True)

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def open_store(url: str) -> Store:
    """A Store for `url` (connects lazily, on first use)."""
    return Store(parse_store_url(url))


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
