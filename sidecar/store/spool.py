"""The writer's disk spool: batches the store could not take, one file each, oldest first.

A file is written whole to `*.tmp`, fsynced and renamed, so after a crash (even kill -9 or
power loss) a `.jsonl` file holds a whole batch or does not exist. The spool is bounded:
making room for a new batch drops the OLDEST batches, and the caller counts their rows.
Values round-trip exactly: str, int, float (NaN and infinities too), None, bool, and
datetime (with its offset) as {"$t": isoformat}; rows never hold dicts, so that is unambiguous.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

_NAME = re.compile(r"^(\d{16})-(\d+)\.jsonl$")  # sequence number, rows
_ENCODER = json.JSONEncoder(
    default=lambda v: _encode(v), check_circular=False, allow_nan=True, separators=(",", ":")
)
_DECODER = json.JSONDecoder(object_hook=lambda o: _decode(o))


class SpoolError(RuntimeError):
    """The spool directory cannot be used; the message says why and what to do."""


@dataclass(slots=True)
class Batch:
    """Rows of one table, inserted (or spooled) together under one deduplication token."""

    table: str
    columns: tuple[str, ...]
    rows: list[Sequence[Any]]  # tuples from the writer, lists when read back from disk
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = 0.0  # writer clock at the first row
    spooled: bool = False  # set once a spool file holds it

    def halves(self) -> tuple[Batch, Batch]:
        """Two batches with derived tokens, so a re-split after a crash deduplicates too."""
        mid = len(self.rows) // 2
        return (
            Batch(self.table, self.columns, self.rows[:mid], f"{self.token}-0"),
            Batch(self.table, self.columns, self.rows[mid:], f"{self.token}-1"),
        )


@dataclass(frozen=True, slots=True)
class SpoolFile:
    """One spooled batch on disk."""

    path: Path
    rows: int
    size: int


class Spool:
    """Batches on local disk, replayed oldest first; thread-safe; one process per directory."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._lockfile = _lock_directory(directory)
        except OSError as exc:
            raise SpoolError(f"cannot use spool directory {directory}: {exc}") from exc
        for partial in directory.glob("*.tmp"):
            partial.unlink()  # a write cut short by a crash: never acknowledged as spooled
        self._files: deque[SpoolFile] = deque()
        for path in sorted(directory.glob("*.jsonl")):
            if m := _NAME.match(path.name):
                self._files.append(SpoolFile(path, int(m.group(2)), path.stat().st_size))
        last = self._files[-1].path.name if self._files else ""
        self._seq = int(last[:16]) + 1 if last else 0
        self.bytes = sum(f.size for f in self._files)

    def __len__(self) -> int:
        return len(self._files)

    def files(self) -> list[SpoolFile]:
        """Spooled batches, oldest first."""
        with self._lock:
            return list(self._files)

    def oldest(self) -> SpoolFile | None:
        """The batch to replay next."""
        with self._lock:
            return self._files[0] if self._files else None

    def put(self, batch: Batch) -> tuple[bool, int]:
        """Write a batch: (kept, rows of older batches dropped to stay within the bound).

        A batch larger than the whole bound is not kept. A batch already spooled is a no-op.
        """
        if batch.spooled:
            return True, 0
        header = {"table": batch.table, "columns": batch.columns, "token": batch.token}
        lines = [_ENCODER.encode(header), *map(_ENCODER.encode, batch.rows)]
        data = ("\n".join(lines) + "\n").encode("ascii")  # ensure_ascii: always ASCII
        if len(data) > self.max_bytes:
            return False, 0
        with self._lock:
            evicted = 0
            while self._files and self.bytes + len(data) > self.max_bytes:
                evicted += self._forget(self._files[0])
            path = self.directory / f"{self._seq:016d}-{len(batch.rows)}.jsonl"
            self._seq += 1
            _write_durably(path, data)
            self._files.append(SpoolFile(path, len(batch.rows), len(data)))
            self.bytes += len(data)
            batch.spooled = True
            return True, evicted

    def load(self, spooled: SpoolFile) -> Batch:
        """Read a spooled batch back (ValueError when the file is damaged)."""
        header, *rows = spooled.path.read_bytes().decode("ascii").split("\n")[:-1]
        meta = _DECODER.decode(header)
        decoded = [_DECODER.decode(r) for r in rows]
        if len(decoded) != spooled.rows:
            raise ValueError(f"{spooled.path} holds {len(decoded)} rows, not {spooled.rows}")
        return Batch(meta["table"], tuple(meta["columns"]), decoded, meta["token"], spooled=True)

    def remove(self, spooled: SpoolFile) -> None:
        """Forget a batch that reached the store (or that cannot be read)."""
        with self._lock:
            if spooled in self._files:
                self._forget(spooled)

    def _forget(self, spooled: SpoolFile) -> int:
        self._files.remove(spooled)
        self.bytes -= spooled.size
        spooled.path.unlink(missing_ok=True)
        return spooled.rows

    def adopt(self, source: Path) -> int:
        """Take over the batches of another spool directory, one no process has open (left by
        a `fathom serve --workers` process that no longer runs), after our own; the rows
        taken. Their tokens come with them; a next `put` evicts the oldest if over the bound."""
        other = Spool(source, self.max_bytes)  # locks it: no writer is using it
        rows = 0
        try:
            with self._lock:
                for spooled in other.files():
                    path = self.directory / f"{self._seq:016d}-{spooled.rows}.jsonl"
                    self._seq += 1
                    os.replace(spooled.path, path)
                    self._files.append(SpoolFile(path, spooled.rows, spooled.size))
                    self.bytes += spooled.size
                    rows += spooled.rows
        finally:
            other.close()
        _fsync_directory(self.directory)
        return rows

    def close(self) -> None:
        """Let another process use the directory."""
        self._lockfile.close()


def _lock_directory(directory: Path) -> Any:
    """Hold an exclusive lock on the directory: two writers would overwrite each other's files."""
    handle = (directory / ".lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SpoolError(
            f"spool directory {directory} is in use by another writer: give each fathom "
            "process its own FATHOM_SPOOL_DIR"
        ) from None
    return handle


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    _fsync_directory(path.parent)  # the rename itself survives a power cut


def _fsync_directory(path: Path) -> None:
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$t": value.isoformat()}
    raise TypeError(f"cannot spool a {type(value).__name__} ({value!r:.40})")


def _decode(obj: dict[str, Any]) -> Any:
    return datetime.fromisoformat(obj["$t"]) if obj.keys() == {"$t"} else obj
