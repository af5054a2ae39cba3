"""The lock `fathom schema apply` holds on a server store: one applier at a time.

The lock is a table. `CREATE TABLE` without IF NOT EXISTS either creates it or fails with
TABLE_ALREADY_EXISTS: atomically on one server; ON CLUSTER, the distributed DDL queue runs
both contenders' statements in one order on every host, so the later one fails everywhere.
Who holds it, and since when, is the table's COMMENT, which system.tables shows on every
host. A lock older than `stale_s` was left by an applier that died, and is broken.
The embedded store needs no lock: one process owns its path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from sidecar.store.client import Store, StoreError

log = logging.getLogger("fathom.schema")
LOCK_TABLE = "fathom.schema_lock"
LOCK_WAIT_S = 600.0
_COMMENT = re.compile(r"^fathom schema apply by (\S+) since (\d+)$")


class LockHeld(StoreError):
    """Another `fathom schema apply` holds the lock, and kept it past the wait."""


@dataclass(frozen=True, slots=True)
class LockSettings:
    """How long to wait for the lock, how often to look, when a lock counts as abandoned."""

    wait_s: float = LOCK_WAIT_S
    poll_s: float = 5.0
    stale_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds the lock, read back from the lock table's comment."""

    name: str
    since: float


def this_process() -> str:
    """A holder name an operator can find: host and pid (no quote can reach the DDL)."""
    return re.sub(r"[^\w.:-]", "_", f"{socket.gethostname()}:{os.getpid()}")


@contextlib.contextmanager
def held(
    store: Store,
    on_cluster: str,
    settings: LockSettings,
    holder: str | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[None]:
    """Hold the lock for the block; `on_cluster` is '' or ' ON CLUSTER name'."""
    acquire(store, on_cluster, settings, holder or this_process(), clock, sleep)
    try:
        yield
    finally:
        try:
            release(store, on_cluster)
        except StoreError as exc:  # the apply's own error, if any, matters more
            log.warning("%s: the schema lock stays; `fathom schema unlock` removes it", exc)


def acquire(
    store: Store,
    on_cluster: str,
    settings: LockSettings,
    holder: str,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> None:
    """Create the lock table, waiting while a live holder has it; LockHeld past the wait."""
    deadline = clock() + settings.wait_s
    while True:
        try:
            store.command_sync(
                f"CREATE TABLE {LOCK_TABLE}{on_cluster} (holder String) ENGINE = Memory "
                f"COMMENT 'fathom schema apply by {holder} since {int(clock())}'"
            )
            return
        except StoreError as exc:
            if "TABLE_ALREADY_EXISTS" not in str(exc):
                raise
        current = current_holder(store)
        if current is None:
            continue  # released between our CREATE and the look
        age = clock() - current.since
        if age > settings.stale_s:
            # Two appliers may both find it stale and both break it; the migrations are
            # IF NOT EXISTS and recorded by version, so a double run repeats no-ops.
            log.warning("breaking a schema lock %.0f s old, held by %s", age, current.name)
            release(store, on_cluster)
            continue
        if clock() >= deadline:
            since = datetime.fromtimestamp(current.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            raise LockHeld(
                f"the schema at {store.url.safe} is locked by {current.name} since {since}: "
                f"another `fathom schema apply` is running. If it died, the lock is broken "
                f"{settings.stale_s:.0f} s after it was taken, or now by `fathom schema unlock`"
            )
        log.info("schema locked by %s for %.0f s; waiting", current.name, age)
        sleep(settings.poll_s)


def current_holder(store: Store) -> Holder | None:
    """The lock's holder, None when nobody holds it."""
    rows = store.query_sync(
        "SELECT comment FROM system.tables WHERE database = 'fathom' AND name = 'schema_lock'"
    )
    if not rows:
        return None
    match = _COMMENT.match(str(rows[0][0]))
    # A comment we did not write still means locked; since 0 makes it stale at once.
    return Holder(match.group(1), float(match.group(2))) if match else Holder("unknown", 0.0)


def release(store: Store, on_cluster: str) -> None:
    """Drop the lock table (also what `fathom schema unlock` does)."""
    store.command_sync(f"DROP TABLE IF EXISTS {LOCK_TABLE}{on_cluster} SYNC")
