"""The batch writer: a bounded queue in memory, batches to the store, a disk spool on outage.

`submit()` never waits: a full queue drops the row and counts it. Rows are batched per table
(`batch_rows` rows, or `flush_s` after a batch's first row) and inserted on the store's
thread, two inserts at a time; when the store lags behind, waiting batches of a table join
into one insert (up to `insert_max_rows`). A batch the store cannot take goes to the spool;
the spool is replayed oldest first once the store answers again (retrying with jittered
exponential backoff). Every batch keeps one deduplication token from creation to insert, so
a batch that reached the store just before a crash, and is replayed from the spool
afterwards, lands once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from sidecar.config import ConfigError
from sidecar.store.client import RowsRejected, StoreError
from sidecar.store.spool import Batch, Spool

log = logging.getLogger("fathom.writer")
IN_FLIGHT = 2  # inserts at a time
T = TypeVar("T")


@runtime_checkable
class Inserter(Protocol):
    """What the writer needs of a store (sidecar.store.client.Store is one)."""

    async def insert(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], token: str = ""
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class WriterSettings:
    """Bounds and timings (settings `writer_*` and `spool_*`); checked when built."""

    queue_rows: int = 100_000  # rows in memory, all tables together
    batch_rows: int = 10_000
    insert_max_rows: int = 50_000  # ready batches of one table go in one insert up to this
    flush_s: float = 1.0  # the longest a row waits in memory
    spool_dir: str = "./fathom-spool"
    spool_max_bytes: int = 1024**3
    # The spool's volume goes with the pod (an emptyDir): what is still spooled at exit is
    # tried once more, and what the store does not take then is counted as dropped.
    spool_ephemeral: bool = False
    retry_s: float = 1.0  # first retry after a failure; doubles per failure
    retry_max_s: float = 30.0
    log_every_s: float = 10.0  # at most one warning per drop reason per interval

    def __post_init__(self) -> None:
        if self.flush_s <= 0:
            raise ConfigError("writer_flush_s must be > 0 seconds")
        for name in ("queue_rows", "batch_rows", "insert_max_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"writer_{name} must be positive")


class Writer:
    """Queue → batches → store, or spool while the store is away. One per process."""

    def __init__(
        self,
        store: Inserter | Callable[[], Inserter],
        settings: WriterSettings,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        # A factory is called on the first insert (and again until it succeeds).
        self._store = store if isinstance(store, Inserter) else None
        self._factory = None if isinstance(store, Inserter) else store
        self.settings = settings
        self._clock = clock
        self._rng = rng or random.Random()
        self.spool = Spool(Path(settings.spool_dir), settings.spool_max_bytes)
        self._disk = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fathom-spool")
        self._pending: dict[str, Batch] = {}  # per table, filling up
        self._pick: dict[str, Callable[[Mapping[str, Any]], tuple[Any, ...]]] = {}
        self._ready: deque[Batch] = deque()  # full, waiting for their insert
        self._inflight: list[Batch] = []  # being inserted, at most IN_FLIGHT
        self.queue_depth = 0
        self.rows_written = 0
        self.rows_spooled = 0
        self.rows_replayed = 0
        self.rows_dropped: Counter[str] = Counter()
        self._unlogged: Counter[str] = Counter()
        self._details: dict[str, str] = {}
        self._last_log = -1e18
        self.store_up = True
        self._taking = False  # the store took the last insert: a backlog may be joined
        self._failures = 0
        self._retry_at = 0.0
        self._stopping = False
        self._stopped = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def spool_bytes(self) -> int:
        """Bytes spooled on disk now."""
        return self.spool.bytes

    def submit(self, table: str, row: Mapping[str, Any]) -> bool:
        """Queue one row; never waits. False (and counted) when it cannot be kept."""
        if self.queue_depth >= self.settings.queue_rows or self._stopped:
            self._drop("writer_stopped" if self._stopped else "queue_full", 1)
            return False
        batch = self._pending.get(table)
        if batch is None:
            batch = self._pending[table] = Batch(table, tuple(row), [], started=self._clock())
            self._pick[table] = _picker(batch.columns)
        try:
            batch.rows.append(self._pick[table](row))
        except KeyError:
            self._drop("bad_row", 1, f"{table} row lacks a column of {batch.columns}")
            return False
        self.queue_depth += 1
        if len(batch.rows) >= self.settings.batch_rows:
            self._ready.append(self._pending.pop(table))
            self._wake.set()
        return True

    async def start(self) -> None:
        """Begin flushing, and replaying whatever an earlier process left in the spool."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="fathom-writer")

    async def stop(self, timeout: float) -> None:  # noqa: ASYNC109 - on expiry it spools
        """Put every queued row in the store, or in the spool if the store cannot take it."""
        if self._stopped:
            return
        self._stopping = True
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="fathom-writer")
        done, _ = await asyncio.wait({self._task}, timeout=timeout)
        self._stopped = True  # from here on submit() refuses: no row can slip in unseen
        if not done:
            await self._abandon_store(timeout)
        else:
            if (exc := self._task.exception()) is not None:
                log.error("writer failed while stopping: %r", exc)
            await self._spool_leftovers()  # rows submitted while the drain was finishing
        if self.settings.spool_ephemeral and len(self.spool):
            await self._hand_off_spool(timeout)
        await asyncio.get_running_loop().run_in_executor(self._disk, self.spool.close)
        self._disk.shutdown(wait=True)
        self._log_drops(force=True)

    async def _abandon_store(self, waited_s: float) -> None:
        """The store hangs: write what is left to the spool instead."""
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.store_up = False
        await self._spool_leftovers()
        log.warning(
            "the store did not take the last rows within %.1f s: spooled them to %s",
            waited_s, self.spool.directory,
        )  # fmt: skip

    async def _hand_off_spool(self, timeout: float) -> None:  # noqa: ASYNC109 - then it counts
        """The last chance of rows on a volume deleted with the pod: replay, else count."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._replay(stopping=True), timeout)
        left = sum(f.rows for f in self.spool.files())
        if left:
            self._drop("spool_ephemeral", left)

    async def _spool_leftovers(self) -> None:
        # Should an insert in flight still land, its token makes the replay a no-op; a
        # batch whose spool write did run is skipped by Spool.put.
        leftovers = [*self._inflight, *self._ready, *self._pending.values()]
        self._inflight, self._ready, self._pending = [], deque(), {}
        self.queue_depth = 0
        for batch in leftovers:
            await self._to_spool(batch)

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._next_wait())
            self._wake.clear()
            try:
                if len(self.spool) and self._clock() >= self._retry_at:
                    await self._replay()
                await self._flush(everything=False)
            except Exception as exc:  # a bug here must neither end all writing nor lose rows
                log.exception("writer cycle failed: handling it as a store outage")
                self._went_down(exc)
                inflight, self._inflight = self._inflight, []
                for batch in inflight:
                    await self._to_spool(batch)
            self._log_drops()
        await self._drain()

    async def _drain(self) -> None:
        await self._flush(everything=True)

    def _next_wait(self) -> float:
        """Seconds until a batch is due or a retry of the store is."""
        now = self._clock()
        waits = [b.started + self.settings.flush_s - now for b in self._pending.values()]
        if self._ready:
            waits.append(0.0)
        if len(self.spool):
            waits.append(self._retry_at - now)
        return max(0.0, min(waits, default=self.settings.flush_s))

    async def _flush(self, everything: bool) -> None:
        """Send full batches, and those past `flush_s` (all of them when stopping)."""
        now = self._clock()
        due = [t for t, b in self._pending.items() if everything or self._due(b, now)]
        self._ready.extend(self._pending.pop(t) for t in due)
        # Two inserts at a time: the store packs one batch while the engine inserts the other.
        # A few at a time, so a cancelled flush leaves the rest queued.
        slots = asyncio.Semaphore(IN_FLIGHT)
        async with asyncio.TaskGroup() as group:
            while self._ready:
                await slots.acquire()
                batch = self._next_insert()
                self._inflight.append(batch)
                self.queue_depth -= len(batch.rows)
                group.create_task(self._deliver(batch, slots))

    async def _deliver(self, batch: Batch, slots: asyncio.Semaphore) -> None:
        """Insert one batch, or spool it; a batch that raises stays in flight for `_run`."""
        try:
            if not (self.store_up and await self._send(batch, replayed=False)):
                await self._to_spool(batch)
            self._inflight.remove(batch)
        finally:
            slots.release()

    def _next_insert(self) -> Batch:
        """The oldest ready batch, joined by the ones behind it when the store lags.

        Every insert has a fixed cost, so fewer, larger inserts are how the writer catches up.
        Only while the store takes inserts: a batch bound for the spool keeps its own size, so
        the spool's bound still drops the oldest rows a batch at a time.
        """
        joined = [self._ready.popleft()]
        head, rows = joined[0], len(joined[0].rows)
        while self._taking and self._ready and self._joins(head, self._ready[0], rows):
            joined.append(self._ready.popleft())
            rows += len(joined[-1].rows)
        if len(joined) == 1:
            return head
        return Batch(head.table, head.columns, [row for batch in joined for row in batch.rows])

    def _joins(self, head: Batch, batch: Batch, rows: int) -> bool:
        return (
            batch.table == head.table
            and batch.columns == head.columns
            and rows + len(batch.rows) <= self.settings.insert_max_rows
        )

    def _due(self, batch: Batch, now: float) -> bool:
        return self._stopping or now - batch.started >= self.settings.flush_s

    async def _replay(self, stopping: bool = False) -> None:
        """Send spooled batches oldest first; stop at the first failure (or when stopping,
        unless this is the replay of `stopping` itself)."""
        rows = 0
        while (head := self.spool.oldest()) is not None and (stopping or not self._stopping):
            try:
                batch = await self._on_disk(self.spool.load, head)
            except (OSError, ValueError) as exc:
                await self._on_disk(self.spool.remove, head)
                self._drop("spool_damaged", head.rows, f"{head.path.name}: {exc}")
                continue
            if not await self._send(batch, replayed=True):
                return
            await self._on_disk(self.spool.remove, head)
            rows += head.rows
            # New rows are not held back behind a long replay: memory stays bounded.
            await self._flush(everything=False)
            if not self.store_up:
                return
        if rows:
            log.info("store is back: replayed %d spooled rows", rows)

    async def _send(self, batch: Batch, replayed: bool) -> bool:
        """Insert a batch; False when the store is down (the batch is then not consumed)."""
        try:
            await self._inserter().insert(batch.table, batch.columns, batch.rows, batch.token)
        except RowsRejected as exc:
            if len(batch.rows) == 1:
                self._drop("rejected", 1, str(exc))
                return True
            # Keep every good row: halve until the bad ones are alone.
            low, high = batch.halves()
            return await self._send(low, replayed) and await self._send(high, replayed)
        except StoreError as exc:
            self._went_down(exc)
            return False
        self._came_back()
        self.rows_written += len(batch.rows)
        self.rows_replayed += len(batch.rows) if replayed else 0
        return True

    def _inserter(self) -> Inserter:
        if self._store is None:
            assert self._factory is not None
            self._store = self._factory()  # may raise StoreError: treated as an outage
        return self._store

    async def _to_spool(self, batch: Batch) -> None:
        try:
            kept, evicted = await self._on_disk(self.spool.put, batch)
        except (OSError, TypeError, ValueError) as exc:
            self._drop("spool_error", len(batch.rows), f"{type(exc).__name__}: {exc}")
            return
        if evicted:
            self._drop("spool_full", evicted)
        if kept:
            self.rows_spooled += len(batch.rows)
        else:
            self._drop("spool_full", len(batch.rows))

    async def _on_disk(self, fn: Callable[..., T], *args: Any) -> T:
        """Spool I/O on the writer's own thread: in order, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._disk, fn, *args)

    def _went_down(self, exc: Exception) -> None:
        self._taking = False
        self._failures += 1
        backoff = min(self.settings.retry_max_s, self.settings.retry_s * 2 ** (self._failures - 1))
        delay = backoff * (0.5 + self._rng.random() / 2)  # jitter: sidecars do not retry in step
        self._retry_at = self._clock() + delay
        if self.store_up:
            log.warning(
                "%s: spooling to %s (%s of %s); will retry in %.1f s, backing off to %.0f s",
                exc, self.spool.directory, _size(self.spool.bytes),
                _size(self.settings.spool_max_bytes), delay, self.settings.retry_max_s,
            )  # fmt: skip
        self.store_up = False

    def _came_back(self) -> None:
        self.store_up = self._taking = True
        self._failures = 0

    def _drop(self, reason: str, rows: int, detail: str = "") -> None:
        self.rows_dropped[reason] += rows
        self._unlogged[reason] += rows
        if detail:
            self._details[reason] = detail
        self._log_drops()

    def _log_drops(self, force: bool = False) -> None:
        """One warning per reason and interval, naming the setting to change."""
        now = self._clock()
        if not self._unlogged or (not force and now - self._last_log < self.settings.log_every_s):
            return
        self._last_log = now
        for reason, rows in self._unlogged.items():
            log.warning("dropped %d row%s: %s", rows, "" if rows == 1 else "s", self._hint(reason))
        self._unlogged.clear()

    def _hint(self, reason: str) -> str:
        s, detail = self.settings, self._details.get(reason, "")
        hints = {
            "queue_full": f"writer queue full (writer_queue_rows={s.queue_rows}); "
            "raise FATHOM_WRITER_QUEUE_ROWS",
            "spool_full": f"spool full, oldest batches dropped first (spool_max_bytes="
            f"{s.spool_max_bytes}); raise FATHOM_SPOOL_MAX_BYTES or bring the store back",
            "spool_error": f"cannot write to the spool at {self.spool.directory} ({detail}); "
            "check FATHOM_SPOOL_DIR (disk full? permissions?)",
            "spool_damaged": f"unreadable spool file ({detail})",
            "rejected": f"the store cannot take these values ({detail}); please report this bug",
            "bad_row": f"row without the table's columns ({detail}); please report this bug",
            "writer_stopped": "submitted after the writer stopped",
            "spool_ephemeral": f"still spooled at exit in {self.spool.directory}, on a volume "
            "deleted with the pod (spool_ephemeral=true): lost unless this container restarts "
            "in the same pod; put spool_dir on a persistent volume to keep them",
        }
        return hints.get(reason, reason)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def _picker(columns: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A row's values in column order, in C (itemgetter): submit() runs once per request."""
    if len(columns) == 1:
        return lambda row: (row[columns[0]],)
    return itemgetter(*columns)
