"""Embedded chDB stores for tests and benches: opened at a path, with or without the schema."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

from sidecar.store import schema
from sidecar.store.client import Store, open_store
from sidecar.store.schema import apply_schema

# How far a percentile read from the speed rollups' histograms may be from the exact value:
# buckets are 5 % wide on a log scale and read back as their geometric centre
# (sidecar/store/schema/004_speed_histograms.sql).
HISTOGRAM_ERROR = 1.05**0.5 - 1


def url(path: Path) -> str:
    """The store URL of the embedded store at `path`."""
    return f"chdb://{path}"


def embedded(path: Path, *, schema: bool = True, isolated: bool = False) -> Store:
    """The embedded store at `path`, with Fathom's schema applied unless `schema` is False;
    `isolated` runs the engine in its own process, as `fathom serve` does."""
    store = open_store(url(path), isolated)
    if schema:
        try:
            apply_schema(store)
        except BaseException:
            store.close()
            raise
    return store


@contextlib.contextmanager
def opened(path: Path, *, schema: bool = False, isolated: bool = False) -> Iterator[Store]:
    """`embedded()` for a with-block, closed after it: one process holds an embedded store at
    a time, so a test reads what a process left only once that process has exited."""
    store = embedded(path, schema=schema, isolated=isolated)
    try:
        yield store
    finally:
        store.close()


def create(path: Path) -> str:
    """An embedded store with the schema at `path`, closed again for another process; its URL."""
    embedded(path).close()
    return url(path)


def apply_before(store: Store, migration: str) -> list[str]:
    """Apply only the migrations named before `migration` (e.g. '005_'): the store as an
    earlier release left it, for upgrade tests. Returns what was applied."""
    earlier = [f for f in schema._files() if f.name < migration]
    with mock.patch.object(schema, "_files", lambda: earlier):
        return apply_schema(store)
