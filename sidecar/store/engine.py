"""Where store operations run: in this process, or chDB in a child process of its own.

chDB holds the GIL for part of every insert, and the proxy timestamps tokens on its event
loop: with the engine in the same process, the loop's p99 lateness during inserts was 0.9-1.7 ms
for 200-row batches and 4.1-4.3 ms for 2,000-row ones, against 0.8 and 2.4-2.6 ms with the
engine in its own process (`python -m bench.store_stall`). `fathom serve` therefore runs it there
(`ChildEngine`); its CPU is then not the proxy's either.
Both kinds answer the same three operations. The child speaks pickle over a private socket
pair and exits when its parent goes away (end of file on the socket). With `fathom serve
--workers N` it also listens on a Unix socket in a private directory, and every proxy process
reaches the one engine there (`SharedEngine`), one operation at a time.

    python -m sidecar.store.engine FD PATH [SOCKET]   (started by ChildEngine, not by hand)
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, NoReturn, Protocol
from urllib.parse import urlencode

from clickhouse_connect.driver.exceptions import ClickHouseError, DataError

PACK_ROWS = 1000
ENGINE_NICE = 10
STOP_S = 30.0  # the longest close() waits for the child to finish its call in flight
# The embedded engine's caches, bounded for a sidecar (bytes). ClickHouse sizes them for a
# server of its own: 5 GiB each for marks, primary indexes and skip-index marks, which a
# long-lived store would fill as its parts accumulate. Reads here are dashboards' and the probe
# worker's small scans; the measured RSS with these bounds is in docs/measurements.md.
ENGINE_CACHES: Mapping[str, int] = {
    "mark_cache_size": 64 << 20,
    "primary_index_cache_size": 64 << 20,
    "index_mark_cache_size": 16 << 20,
    "uncompressed_cache_size": 0,
    "compiled_expression_cache_size": 16 << 20,
    "query_condition_cache_size": 16 << 20,
}


def embedded_client(path: str) -> Any:
    """A clickhouse-connect client on the embedded engine at `path`, its caches bounded (the
    first client of a process starts the engine; later ones share it as it is)."""
    import clickhouse_connect

    options = {k: str(v) for k, v in ENGINE_CACHES.items()}
    try:
        return clickhouse_connect.get_client(dsn=f"chdb://{path}", chdb_options=options)
    except ClickHouseError as exc:  # its message names the path with the options appended
        raise StoreError(first_line(str(exc).replace("?" + urlencode(options), ""))) from exc


class StoreError(RuntimeError):
    """The store is unusable or refused an operation; the message says which store and why."""


class RowsRejected(StoreError):
    """The rows themselves cannot be stored (a value of the wrong type): retrying cannot help."""


def query(client: Any, sql: str, parameters: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """Rows of a SELECT, parameters bound server-side ({name:Type})."""
    return [tuple(row) for row in client.query(sql, parameters=dict(parameters)).result_rows]


def command(client: Any, sql: str, parameters: Mapping[str, Any]) -> None:
    """Run a statement that returns no rows."""
    client.command(sql, parameters=dict(parameters))


def insert(
    client: Any,
    table: str,
    columns: Sequence[str],
    data: Sequence[Sequence[Any]],
    token: str,
    column_oriented: bool = False,
) -> None:
    """Insert rows (or columns); a non-empty `token` makes a repeated insert a no-op."""
    settings = {"insert_deduplication_token": token} if token else {}
    try:
        client.insert(
            table, data, column_names=list(columns), settings=settings,
            column_oriented=column_oriented,
        )  # fmt: skip
    except DataError as exc:  # raised while encoding our rows, before anything is sent
        raise RowsRejected(f"insert into {table}: {short(exc)}") from exc
    except (TypeError, ValueError, AttributeError) as exc:
        # clickhouse-connect's encoders raise these for a value of the wrong type
        raise RowsRejected(f"insert into {table}: {type(exc).__name__}: {exc}") from exc


def _insert_packed(
    client: Any, table: str, columns: Sequence[str], packed: list[bytes], token: str
) -> None:
    """`insert` of the columns `pack` made."""
    parts: list[list[tuple[Any, ...]]] = [pickle.loads(part) for part in packed]
    data = [list(itertools.chain.from_iterable(p[i] for p in parts)) for i in range(len(columns))]
    insert(client, table, columns, data, token, column_oriented=True)


def pack(rows: Sequence[Sequence[Any]]) -> list[bytes]:
    """Rows as pickled column slices of PACK_ROWS rows.

    Slices bound how long one pickling call holds this process's GIL; columns also
    unpickle faster than rows in the child.
    """
    return [
        pickle.dumps(list(zip(*rows[i : i + PACK_ROWS], strict=True)), pickle.HIGHEST_PROTOCOL)
        for i in range(0, len(rows), PACK_ROWS)
    ]


OPS: dict[str, Callable[..., Any]] = {
    "query": query, "command": command, "insert": insert, "insert_packed": _insert_packed,
}  # fmt: skip


class Engine(Protocol):
    """Runs store operations; raises StoreError (or RowsRejected) when they fail."""

    @property
    def alive(self) -> bool: ...

    def run(self, op: str, *args: Any) -> Any: ...

    def close(self) -> None: ...


class InProcess:
    """clickhouse-connect in this process: ClickHouse servers, and chDB for tools and tests."""

    alive = True

    def __init__(self, client: Any) -> None:
        self._client = client

    def run(self, op: str, *args: Any) -> Any:
        """One operation on this process's client."""
        try:
            return OPS[op](self._client, *args)
        except (ClickHouseError, OSError) as exc:
            raise StoreError(short(exc)) from exc

    def close(self) -> None:
        """Close the client."""
        self._client.close()


class _Remote:
    """Operations sent to an engine process over a connection; one call at a time."""

    _conn: Connection
    alive: bool

    def run(self, op: str, *args: Any) -> Any:
        """One operation in the child; StoreError when the child has died."""
        if op == "insert":
            table, columns, rows, token = args
            op, args = "insert_packed", (table, columns, pack(rows), token)
        try:
            self._conn.send((op, args))
        except OSError as exc:
            self._died(exc)
        return self._reply()

    def _reply(self) -> Any:
        try:
            status, value = self._conn.recv()
        except (EOFError, OSError) as exc:
            self._died(exc)
        if status == "ok":
            return value
        if status == "rejected":
            raise RowsRejected(value)
        if status == "bug":
            raise RuntimeError(f"store engine process: {value}")
        raise StoreError(value)

    def _died(self, exc: BaseException) -> NoReturn:
        self.alive = False
        raise StoreError(f"the engine process is gone ({self._gone()}): {short(exc)}") from exc

    def _gone(self) -> str:
        return "connection closed"


class ChildEngine(_Remote):
    """chDB at `path` in a child process; with `listen`, other processes reach it there too."""

    def __init__(self, path: str, listen: str = "") -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "sidecar.store.engine", str(theirs.fileno()), path,
                 *([listen] if listen else [])],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self._conn = Connection(ours.detach())
        self.alive = True
        try:
            self._reply()  # the child says whether the engine opened
        except StoreError:
            self.close()
            raise

    def _gone(self) -> str:
        return f"exit code {self._process.poll()}"

    def close(self) -> None:
        """Ask the child to close the engine and exit; kill it if it does not."""
        self.alive = False
        with contextlib.suppress(OSError):  # already gone
            self._conn.send(None)
        try:
            self._process.wait(STOP_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._conn.close()


class SharedEngine(_Remote):
    """The engine another process owns (`ChildEngine(path, listen)`), at its Unix socket."""

    def __init__(self, address: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(address)
        except OSError as exc:
            sock.close()
            raise StoreError(f"no engine process at {address}: {short(exc)}") from exc
        self._conn = Connection(sock.detach())
        self.alive = True

    def close(self) -> None:
        """Hang up; the engine goes on serving the other processes."""
        self.alive = False
        self._conn.close()


def serve(conn: Connection, path: str, listen: str = "") -> None:
    """The child's loop: open the engine, answer operations (from the parent, and from the
    processes that connect at `listen`) until the parent says stop or is gone."""
    try:
        client = embedded_client(path)
        server = _listener(listen) if listen else None
    except (ClickHouseError, OSError, StoreError) as exc:
        conn.send(("error", f"cannot open the embedded store at {path}: {short(exc)}"))
        return
    conn.send(("ok", None))
    peers: list[Connection] = []
    try:
        while _serve_ready(client, conn, server, peers):
            pass
    finally:
        for peer in peers:
            peer.close()
        if server is not None:
            server.close()
        client.close()


def _listener(address: str) -> socket.socket:
    # The socket of an engine process that died before this one (its owner restarts it).
    with contextlib.suppress(FileNotFoundError):
        os.unlink(address)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(address)
    server.listen(64)
    return server


def _serve_ready(
    client: Any, conn: Connection, server: socket.socket | None, peers: list[Connection]
) -> bool:
    """Answer every connection with a message waiting; False once the parent is done."""
    for ready in wait([conn, *peers, *([server] if server else [])]):
        if ready is server:
            peer, _ = server.accept()
            peers.append(Connection(peer.detach()))
            continue
        assert isinstance(ready, Connection)
        if (message := _next(ready)) is None:
            if ready is conn:
                return False
            peers.remove(ready)  # a proxy process hung up (or stopped)
            ready.close()
            continue
        op, args = message
        with contextlib.suppress(OSError):  # a peer gone mid-call: its writer spools the batch
            ready.send(_answer(client, op, args))
    return True


def _next(conn: Connection) -> tuple[str, tuple[Any, ...]] | None:
    try:
        message: tuple[str, tuple[Any, ...]] | None = conn.recv()
    except (EOFError, OSError):
        return None  # the parent is gone
    return message


def _answer(client: Any, op: str, args: tuple[Any, ...]) -> tuple[str, Any]:
    try:
        return "ok", OPS[op](client, *args)
    except RowsRejected as exc:
        return "rejected", str(exc)
    except (ClickHouseError, OSError) as exc:
        return "error", short(exc)
    except Exception:  # a bug: the parent raises it, the child keeps serving
        return "bug", traceback.format_exc(limit=5)


def short(exc: BaseException) -> str:
    """The first line of an error's message, capped."""
    return first_line(str(exc)) or type(exc).__name__


def first_line(text: str) -> str:
    """The first line of a message, capped."""
    lines = text.strip().splitlines()
    return lines[0][:300] if lines else ""


def yield_to_the_proxy() -> None:
    """Run this process behind the proxy on a busy core: inserts can wait a few milliseconds,
    token timestamps cannot. SCHED_BATCH (no wake-up preemption), ENGINE_NICE steps below the
    proxy (at 10, about a tenth of the proxy's share when both want the core); not SCHED_IDLE:
    the writer's queue must still drain while the proxy is saturated."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux, or not allowed
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    with contextlib.suppress(OSError):
        os.nice(ENGINE_NICE)


def main(argv: list[str]) -> None:
    """Entry point of the child process."""
    fd, path, *listen = argv
    yield_to_the_proxy()
    serve(Connection(int(fd)), path, *listen)


if __name__ == "__main__":
    main(sys.argv[1:])
