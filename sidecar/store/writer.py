"""The batch writer: a bounded queue in memory, batches to the store, a disk spool on outage.

`submit()` never waits: a full queue drops the row and counts it. Batches (per table, N rows
or T seconds) are inserted on the store's thread; when the store fails they go to the spool,
which is replayed oldest first once it answers again. Each batch carries a deduplication
token, so a batch inserted just before a crash and replayed after lands once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from sidecar.store.client import StoreError

log = logging.getLogger("fathom.writer")


class Inserter(Protocol):
    """What the writer needs of a store."""

    async def insert(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], token: str = ""
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class WriterSettings:
    """Bounds and timings; the names match the `writer_*`/`spool_*` settings of `fathom serve`."""

    queue_rows: int = 100_000
    batch_rows: int = 10_000
    flush_s: float = 1.0
    spool_dir: str = "./fathom-spool"
    spool_max_bytes: int = 1024**3
    retry_s: float = 5.0


@dataclass(slots=True)
class Batch:
    """Rows of one table, inserted (or spooled) together under one token."""

    table: str
    columns: tuple[str, ...]
    rows: list[list[Any]]
    token: str = field(default_factory=lambda: uuid.uuid4().hex)


class Spool:
    """Batches on local disk, one file each, replayed in the order they were written."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        for partial in directory.glob("*.tmp"):
            partial.unlink()  # a write cut short by a crash: never acknowledged as spooled
        files = self.files()
        self._seq = int(files[-1].name.split(".")[0]) + 1 if files else 0
        self.bytes = sum(f.stat().st_size for f in files)

    def files(self) -> list[Path]:
        """Spooled batches, oldest first."""
        return sorted(self.directory.glob("*.jsonl"))

    def put(self, batch: Batch) -> bool:
        """Write a batch; False (nothing written) when it would exceed the size bound."""
        header = {"table": batch.table, "columns": batch.columns, "token": batch.token}
        lines = [json.dumps(header)] + [json.dumps(r, default=_encode) for r in batch.rows]
        data = ("\n".join(lines) + "\n").encode()
        if self.bytes + len(data) > self.max_bytes:
            return False
        path = self.directory / f"{self._seq:016d}.jsonl"
        self._seq += 1
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # atomic: a file either holds a whole batch or does not exist
        self.bytes += len(data)
        return True

    def load(self, path: Path) -> Batch:
        """Read a spooled batch back."""
        header, *rows = path.read_text().splitlines()
        meta = json.loads(header)
        decoded = [json.loads(r, object_hook=_decode) for r in rows]
        return Batch(meta["table"], tuple(meta["columns"]), decoded, meta["token"])

    def remove(self, path: Path) -> None:
        """Forget a batch that reached the store."""
        self.bytes -= path.stat().st_size
        path.unlink()


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$t": value.isoformat()}
    raise TypeError(f"cannot spool a {type(value).__name__}")


def _decode(obj: dict[str, Any]) -> Any:
    return datetime.fromisoformat(obj["$t"]) if obj.keys() == {"$t"} else obj


class Writer:
    """Queue → batches → store, or spool while the store is away."""

    def __init__(
        self,
        store: Inserter,
        settings: WriterSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self.settings = settings
        self._clock = clock
        self.spool = Spool(Path(settings.spool_dir), settings.spool_max_bytes)
        self._pending: dict[str, Batch] = {}
        self.queue_depth = 0
        self.rows_written = 0
        self.rows_spooled = 0
        self.rows_replayed = 0
        self.rows_dropped: Counter[str] = Counter()
        self.store_up = True
        self._down_since = 0.0
        self._inflight: Batch | None = None  # the batch being inserted right now
        self._stopping = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_warning = -1e9

    def submit(self, table: str, row: Mapping[str, Any]) -> bool:
        """Queue one row; never waits. False (and counted) when the queue is full."""
        if self.queue_depth >= self.settings.queue_rows:
            self._drop("queue_full", 1)
            return False
        batch = self._pending.get(table)
        if batch is None:
            batch = self._pending[table] = Batch(table, tuple(row), [])
        try:
            batch.rows.append([row[c] for c in batch.columns])
        except KeyError:
            self._drop("bad_row", 1)
            return False
        self.queue_depth += 1
        if len(batch.rows) >= self.settings.batch_rows:
            self._wake.set()
        return True

    async def start(self) -> None:
        """Begin flushing (and replaying whatever an earlier process left in the spool)."""
        self._task = asyncio.create_task(self._run(), name="fathom-writer")

    async def stop(self, grace_s: float) -> None:
        """Flush everything to the store, or to the spool if the store cannot take it in time."""
        self._stopping = True
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._flush(replay=False))
        done, _ = await asyncio.wait({self._task}, timeout=grace_s)
        if done:
            return
        # The store hangs: put everything on disk. Should the insert in flight still land,
        # its token makes the replay of the same batch a no-op.
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        leftovers = [self._inflight] if self._inflight else []
        self._inflight = None
        self.store_up = False
        for batch in leftovers + list(self._pending.values()):
            await self._to_spool(batch)
        self._pending = {}
        log.warning("store did not take the last rows within %.0f s: spooled them", grace_s)

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.flush_s):
                    await self._wake.wait()
            self._wake.clear()
            await self._flush(replay=not self._stopping)
        await self._flush(replay=False)

    async def _flush(self, replay: bool) -> None:
        if replay and self.spool.files():
            await self._replay()
        while self._pending:
            # One at a time, so a cancelled flush leaves the rest in `_pending`.
            table = next(iter(self._pending))
            batch = self._inflight = self._pending.pop(table)
            self.queue_depth -= len(batch.rows)
            if self.store_up and not self.spool.files() and await self._insert(batch):
                self.rows_written += len(batch.rows)
            else:
                await self._to_spool(batch)
            self._inflight = None

    async def _insert(self, batch: Batch) -> bool:
        try:
            await self._store.insert(batch.table, batch.columns, batch.rows, batch.token)
        except StoreError as exc:
            self._went_down(exc)
            return False
        self.store_up = True
        return True

    async def _replay(self) -> None:
        """Send spooled batches oldest first; stop at the first failure."""
        if not self.store_up and self._clock() - self._down_since < self.settings.retry_s:
            return
        for path in self.spool.files():
            batch = await asyncio.to_thread(self.spool.load, path)
            if not await self._insert(batch):
                self._down_since = self._clock()
                return
            self.spool.remove(path)
            self.rows_replayed += len(batch.rows)
            self.rows_written += len(batch.rows)
        log.info("store is back at work: spool replayed")

    async def _to_spool(self, batch: Batch) -> None:
        if await asyncio.to_thread(self.spool.put, batch):
            self.rows_spooled += len(batch.rows)
        else:
            self._drop("spool_full", len(batch.rows))

    def _went_down(self, exc: Exception) -> None:
        if self.store_up:
            self._down_since = self._clock()
            log.warning(
                "store unavailable (%s): spooling to %s (%.0f MB of %.0f MB); will retry every "
                "%.0f s",
                exc, self.spool.directory, self.spool.bytes / 1e6,
                self.settings.spool_max_bytes / 1e6, self.settings.retry_s,
            )  # fmt: skip
        self.store_up = False

    def _drop(self, reason: str, rows: int) -> None:
        self.rows_dropped[reason] += rows
        now = self._clock()
        if now - self._last_warning >= 10.0:
            self._last_warning = now
            hint = {
                "queue_full": f"writer queue full (writer_queue_rows={self.settings.queue_rows}); "
                "raise FATHOM_WRITER_QUEUE_ROWS",
                "spool_full": f"spool full (spool_max_bytes={self.settings.spool_max_bytes}); "
                "raise FATHOM_SPOOL_MAX_BYTES or bring the store back",
                "bad_row": "row without the table's columns (a bug: please report it)",
            }[reason]
            log.warning("dropped %d rows so far: %s", sum(self.rows_dropped.values()), hint)
