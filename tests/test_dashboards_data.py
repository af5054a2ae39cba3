"""The seeded store of tests/support/seeded.py holds the traffic its users count on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from sidecar.store.client import Store
from tests.support.seeded import open_seeded


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """The seeded store, shared by a module's tests (one chDB engine per process)."""
    with contextlib.closing(open_seeded(tmp_path_factory.mktemp("dash") / "db")) as store:
        yield store


def test_seeded_store_holds_user_and_probe_traffic(seeded: Store) -> None:
    rows = seeded.query_sync(
        "SELECT origin, count() FROM fathom.requests GROUP BY origin ORDER BY origin"
    )
    assert dict(rows) == {"canary": 150, "probe": 150, "user": 2400}
    per_series = seeded.query_sync(
        "SELECT deployment, probe, count() FROM fathom.quality GROUP BY ALL ORDER BY ALL"
    )
    assert {count for _, _, count in per_series} == {850}
