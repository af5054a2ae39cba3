"""Schema migrations on the real chDB engine; cluster DDL checked by chDB's own parser."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fathom.cli import main
from sidecar.record import REQUEST_COLUMNS, Record
from sidecar.store import schema_lock
from sidecar.store.client import Store
from sidecar.store.schema import (
    SchemaBehind,
    Target,
    apply,
    apply_schema,
    cluster_checks,
    local_checks,
    missing,
    render,
    require,
    verify_cluster,
)
from sidecar.store.schema_lock import LockHeld, LockSettings
from tests.support.records import request_values
from tests.support.store import HISTOGRAM_ERROR, apply_before, opened

TABLES = {
    "requests", "samples", "quality", "regressions", "requests_1m", "speed_1m", "speed_1h",
}  # fmt: skip
MIGRATIONS = [
    "001_init.sql", "002_speed_rollup.sql", "003_reasoning_tools.sql", "004_speed_histograms.sql",
    "005_tenant.sql",
]  # fmt: skip
ROLLUPS = {"requests_1m", "speed_1m", "speed_1h"}
# The median a speed rollup's histogram gives (the dashboards' read).
HIST_P50 = "nullIf(quantilesExactWeightedMerge(0.5, 0.9, 0.95, 0.99)({0}_hist)[1], 0)"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """An embedded store without the schema: the tests apply it."""
    with opened(tmp_path / "db") as empty:
        yield empty


def ttl_days(store: Store) -> dict[str, int]:
    rows = store.query_sync("SELECT name, engine_full FROM system.tables WHERE database = 'fathom'")
    return {
        name: int(m.group(1)) for name, engine in rows if (m := re.search(r"Day\((\d+)\)", engine))
    }


def test_apply_twice_is_idempotent_and_versioned(store: Store) -> None:
    assert apply_schema(store) == MIGRATIONS
    assert apply_schema(store) == []
    assert store.query_sync(
        "SELECT version, name FROM fathom.schema_migrations ORDER BY version"
    ) == [(int(name[:3]), name) for name in MIGRATIONS]
    assert TABLES | {"requests_1m_mv", "speed_1m_mv", "speed_1h_mv", "schema_migrations"} == {
        r[0] for r in store.query_sync("SHOW TABLES FROM fathom")
    }
    assert ttl_days(store) == {
        "requests": 30, "samples": 7, "quality": 180, "regressions": 180, "requests_1m": 180,
        "speed_1m": 30, "speed_1h": 365,
    }  # fmt: skip
    rows = store.query_sync("SELECT name, engine_full FROM system.tables WHERE database = 'fathom'")
    windows = {n for n, e in rows if "non_replicated_deduplication_window = 10000" in e}
    assert windows == TABLES  # what makes a replayed batch land once, rollup included
    # A migration cut short (statements ran, version not recorded) simply runs again.
    store.command_sync("TRUNCATE TABLE fathom.schema_migrations")
    assert apply_schema(store) == MIGRATIONS


def test_requests_table_matches_the_record(store: Store) -> None:
    apply_schema(store)
    columns = store.query_sync(
        "SELECT name, type, compression_codec, is_in_partition_key, is_in_sorting_key "
        "FROM system.columns WHERE database = 'fathom' AND table = 'requests' ORDER BY position"
    )
    assert tuple(c[0] for c in columns) == REQUEST_COLUMNS
    types = {c[0]: c[1] for c in columns}
    assert types["ts"] == "DateTime64(3, 'UTC')"
    assert types["ttft_ms"] == types["itl_p99_ms"] == "Nullable(Float32)"
    for name in ("route", "model", "deployment", "origin", "error", "finish_reason",
                 "tokens_source", "upstream"):  # fmt: skip
        assert types[name] == "LowCardinality(String)", name
    codecs = {c[0]: c[2] for c in columns}
    assert codecs["ts"] == "CODEC(Delta(8), ZSTD(1))"
    assert [c[0] for c in columns if c[4]] == ["ts", "model", "deployment", "origin"]
    [(engine,)] = store.query_sync(
        "SELECT engine_full FROM system.tables WHERE database = 'fathom' AND name = 'requests'"
    )
    assert engine.startswith("MergeTree PARTITION BY toDate(ts) ORDER BY (model, deployment")


def test_ttl_overrides_render_and_retune_existing_tables(store: Store) -> None:
    statements = [s for m in render(Target(ttl_days={"samples": 2})) for s in m.statements]
    assert any("fathom.samples" in s and "INTERVAL 2 DAY" in s for s in statements)
    apply_schema(store)
    changed = apply(store, Target(ttl_days={"requests": 3, "quality": 90}))
    assert changed == ["ttl quality=90d", "ttl requests=3d"]
    assert ttl_days(store)["requests"] == 3 and ttl_days(store)["quality"] == 90
    # `fathom serve` applies the defaults at start: it must not undo a chosen retention.
    assert apply_schema(store) == [] and ttl_days(store)["requests"] == 3
    with pytest.raises(ValueError, match="no TTL for"):
        apply(store, Target(ttl_days={"nope": 1}))


def test_cluster_schema_parses_in_chdb(store: Store) -> None:
    statements = [s for m in render(Target(cluster="prod-eu")) for s in m.statements]
    backfill = [s for s in statements if s.startswith("INSERT INTO")]
    assert all("ON CLUSTER `prod-eu`" in s for s in statements if s not in backfill)
    joined = "\n".join(statements)
    assert joined.count("ReplicatedMergeTree(") == 5 and "ReplicatedAggregatingMergeTree(" in joined
    for table in TABLES:
        assert (
            f"AS fathom.{table}_local ENGINE = Distributed(`prod-eu`, fathom, {table}_local,"
            in (joined)
        )
    assert "TO fathom.requests_1m_local" in joined and "FROM fathom.requests_local" in joined
    assert joined.count("SETTINGS replicated_deduplication_window = 10000") == len(TABLES)
    # Columns added to a sharded table are added to its Distributed table too.
    for table in ("requests", "speed_1m", "speed_1h"):
        for name in (f"{table}_local", table):
            assert f"ALTER TABLE fathom.{name} ON CLUSTER `prod-eu`\n    ADD COLUMN" in joined
    assert "ALTER TABLE fathom.speed_1m_mv_local ON CLUSTER `prod-eu`\nMODIFY QUERY" in joined
    assert "ALTER TABLE fathom.speed_1m_mv ON" not in joined  # views have no Distributed twin
    # The backfill runs once, through the Distributed tables, after they gained the columns.
    (insert,) = backfill
    assert insert.startswith("INSERT INTO fathom.speed_1m (") and "FROM fathom.requests\n" in insert
    gains = "ALTER TABLE fathom.speed_1m ON CLUSTER `prod-eu`\n    ADD COLUMN IF NOT EXISTS ttfb_ms"
    histograms = next(i for i, s in enumerate(statements) if s.startswith(gains))
    assert histograms < statements.index(insert)
    for statement in statements:
        ast = store.query_sync("EXPLAIN AST " + statement)  # raises on a syntax error
        kinds = ("CreateQuery", "CreateDatabaseQuery", "AlterQuery", "InsertQuery")
        assert ast and ast[0][0].split()[0] in kinds, statement


async def test_rollup_view_keeps_per_minute_speed(store: Store) -> None:
    apply_schema(store)
    # Recent: rows already past their TTL are not even written.
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
    rows = []
    for i in range(200):
        origin = "user" if i < 150 else "probe"
        record = Record(
            ts=minute + timedelta(seconds=i % 60), request_id=f"r{i}", route="chat", model="m",
            deployment="d", origin=origin, stream=True, ttft_ms=float(i), itl_mean_ms=10.0,
            decode_tps=50.0, output_tokens=5, error="upstream_http" if i % 50 == 0 else "",
        )  # fmt: skip
        rows.append(request_values(record))
    await store.insert("fathom.requests", REQUEST_COLUMNS, rows)
    got = store.query_sync(
        "SELECT origin, countMerge(requests), countIfMerge(errors), sumMerge(output_tokens), "
        "quantilesTDigestMerge(0.5, 0.9, 0.95, 0.99)(ttft_ms)[1], "
        "quantilesTDigestMerge(0.5, 0.9, 0.95, 0.99)(decode_tps)[1] "
        "FROM fathom.requests_1m GROUP BY origin ORDER BY origin"
    )
    assert [g[:4] for g in got] == [("probe", 50, 1, 250), ("user", 150, 3, 750)]
    assert 70 <= got[1][4] <= 80 and got[1][5] == pytest.approx(50.0)


def test_cli_apply_and_render(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"chdb://{tmp_path / 'cli'}"
    assert main(["schema", "apply", "--store", url, "--ttl-days", "samples=3"]) == 0
    assert main(["schema", "apply", "--store", url, "--ttl-days", "samples=3,requests=30"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"schema at {url}: {', '.join(MIGRATIONS)}", f"schema at {url}: up to date"]
    assert main(["schema", "apply", "--store", url, "--ttl-days", "samples=0"]) == 2
    assert "expected TABLE=DAYS" in capsys.readouterr().err
    assert main(["schema", "render", "--cluster", "main", "--ttl-days", "quality=9"]) == 0
    script = capsys.readouterr().out
    assert "-- 001 001_init.sql" in script and "ON CLUSTER main" in script
    assert "INTERVAL 9 DAY" in script and script.count(";\n") == (
        script.count("CREATE ") + script.count("ALTER TABLE ") + script.count("INSERT INTO ")
    )


def test_require_names_what_is_missing_and_accepts_newer_versions(store: Store) -> None:
    with pytest.raises(SchemaBehind) as behind:
        require(store)
    message = str(behind.value)
    needs = f"this release needs {int(MIGRATIONS[-1][:3])} (missing {', '.join(MIGRATIONS)})"
    assert f"at schema version 0, {needs}" in message
    assert "fathom schema apply" in message
    assert missing(store) == MIGRATIONS
    apply_schema(store)
    require(store)
    # A newer release applied its schema first; this one's pods still run during the rollout.
    store.insert_sync(
        "fathom.schema_migrations", ("version", "name", "applied_at"),
        [(999, "999_future.sql", datetime.now(UTC))],
    )  # fmt: skip
    require(store)
    store.command_sync("DELETE FROM fathom.schema_migrations WHERE version = 1")
    with pytest.raises(SchemaBehind, match=r"version 999, .* \(missing 001_init.sql\)"):
        require(store)


def hold_lock(store: Store, holder: str, since: float) -> None:
    """The lock as another `fathom schema apply` would have taken it."""
    store.command_sync("CREATE DATABASE IF NOT EXISTS fathom")
    schema_lock.acquire(
        store, "", LockSettings(wait_s=0), holder, clock=lambda: since, sleep=_never
    )


def _never(_s: float) -> None:
    raise AssertionError("waited without a live lock")


def test_apply_waits_for_a_live_lock_and_refuses_past_the_wait(store: Store) -> None:
    now = 1_800_000_000.0
    hold_lock(store, "job-a:7", since=now - 30)
    with pytest.raises(LockHeld, match=r"locked by job-a:7 since 2027-01-15 07:59:30 UTC"):
        schema_lock.acquire(store, "", LockSettings(wait_s=0), "job-b:9", lambda: now, _never)
    assert "schema_migrations" not in {r[0] for r in store.query_sync("SHOW TABLES FROM fathom")}
    # The holder finishes while we wait: the next try takes the lock, and apply runs.
    waits: list[float] = []

    def holder_finishes(seconds: float) -> None:
        waits.append(seconds)
        schema_lock.release(store, "")

    with schema_lock.held(store, "", LockSettings(poll_s=2.5), "job-b:9", lambda: now,
                          holder_finishes):  # fmt: skip
        assert schema_lock.current_holder(store) == schema_lock.Holder("job-b:9", now)
        assert apply(store) == MIGRATIONS
    assert waits == [2.5]
    assert schema_lock.current_holder(store) is None  # released on the way out


def test_apply_breaks_a_stale_lock(store: Store) -> None:
    hold_lock(store, "died:1", since=time.time() - 7200)
    assert apply(store, lock=LockSettings(wait_s=0, stale_s=3600)) == MIGRATIONS
    assert schema_lock.current_holder(store) is None


def test_cluster_checks_parse_and_find_unreplicated_tables(store: Store) -> None:
    checks = cluster_checks("prod-eu")
    assert checks.sync == "SYSTEM SYNC REPLICA ON CLUSTER `prod-eu` fathom.schema_migrations"
    for statement in (checks.sync, checks.plain_tables, checks.host_versions):
        assert store.query_sync("EXPLAIN AST " + statement)  # raises on a syntax error
    assert "clusterAllReplicas(`prod-eu`, system.tables)" in checks.plain_tables
    # A single-server schema is what a sidecar used to leave on the node it reached: on a
    # cluster every one of these tables is a problem (the same SQL, run on one real engine).
    apply_schema(store)
    problems = verify_cluster(store, local_checks())
    found = sorted(re.findall(r"fathom\.(\w+) is (\w+), not replicated", "\n".join(problems)))
    assert found == sorted(
        [(t, "AggregatingMergeTree" if t in ROLLUPS else "MergeTree") for t in TABLES]
        + [("schema_migrations", "MergeTree")]
    )
    assert not [p for p in problems if "not recorded" in p]
    store.command_sync("TRUNCATE TABLE fathom.schema_migrations")
    assert verify_cluster(store, local_checks()) == problems  # no rows: no host to blame


def test_cli_check_and_unlock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"chdb://{tmp_path / 'cli'}"
    assert main(["schema", "check", "--store", url]) == 1
    assert "missing 001_init.sql" in capsys.readouterr().err
    assert main(["schema", "apply", "--store", url]) == 0
    assert main(["schema", "check", "--store", url]) == 0
    assert main(["schema", "unlock", "--store", url, "--cluster", "bad name"]) == 2
    assert "cluster name 'bad name'" in capsys.readouterr().err
    assert main(["schema", "unlock", "--store", url]) == 0


def test_cli_takes_the_ddl_credential_from_fathom_schema_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    schema_url, pods_url = f"chdb://{tmp_path / 'ddl'}", f"chdb://{tmp_path / 'pods'}"
    monkeypatch.setenv("FATHOM_SCHEMA_STORE", schema_url)
    monkeypatch.setenv("FATHOM_STORE", pods_url)
    assert main(["schema", "apply"]) == 0
    assert capsys.readouterr().out == f"schema at {schema_url}: {', '.join(MIGRATIONS)}\n"


async def test_speed_rollup_keeps_breakdowns_and_answered_latency(store: Store) -> None:
    apply_schema(store)
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
    rows = []
    for i in range(120):
        failed = i % 4 == 0
        record = Record(
            ts=minute + timedelta(seconds=i % 60), request_id=f"s{i}",
            route="chat" if i % 2 else "completion", model="m", deployment="d", origin="user",
            stream=True, status=502 if failed else 200, error="upstream_http" if failed else "",
            finish_reason="" if failed else ("length" if i % 3 == 0 else "stop"),
            e2e_ms=60_000.0 if failed else 100.0 + i, output_tokens=4,
        )  # fmt: skip
        rows.append(request_values(record))
    await store.insert("fathom.requests", REQUEST_COLUMNS, rows)
    query = (
        "SELECT route, sum(requests), sumMap(statuses), sumMap(errors), sumMap(finish_reasons), "
        "sum(output_tokens), quantilesExactWeightedMerge(0.5, 0.9, 0.95, 0.99)(e2e_ms_hist)[4] "
        "FROM fathom.{} GROUP BY route ORDER BY route"
    )
    got = store.query_sync(query.format("speed_1m"))
    assert store.query_sync(query.format("speed_1h")) == got  # the hourly rollup holds the same
    chat, completion = got
    assert chat[:2] == ("chat", 60) and completion[:2] == ("completion", 60)
    assert chat[2] == {"200": 60} and completion[2] == {"200": 30, "502": 30}
    assert completion[3] == {"": 30, "upstream_http": 30}
    assert chat[4] == {"stop": 40, "length": 20} and chat[5] == 240
    assert completion[6] < 1000  # the failed requests' 60 s are not latency


async def test_a_store_at_the_previous_version_upgrades_in_place(store: Store) -> None:
    assert apply_before(store, "003_") == MIGRATIONS[:2]
    old_columns = REQUEST_COLUMNS[: REQUEST_COLUMNS.index("ttfr_ms")]
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
    old = [
        Record(ts=minute, request_id=f"old{i}", route="chat", model="m", deployment="d",
               stream=True, ttft_ms=100.0 + i, e2e_ms=500.0, output_tokens=7).to_row()
        for i in range(30)
    ]  # fmt: skip
    await store.insert("fathom.requests", old_columns, [[r[c] for c in old_columns] for r in old])
    assert apply_schema(store) == MIGRATIONS[2:]
    got = store.query_sync(
        "SELECT count(), sum(output_tokens), countIf(ttfr_ms IS NULL AND ttfa_ms IS NULL AND "
        "ttft_tool_ms IS NULL AND reasoning_tokens = 0 AND reasoning_source = 'none' AND "
        "tool_calls = 0 AND tool_calls_invalid = 0) FROM fathom.requests"
    )
    assert got == [(30, 210, 30)]  # every row kept; the new columns read their defaults
    new = Record(
        ts=minute, request_id="new", route="chat", model="m", deployment="d", stream=True,
        ttft_ms=50.0, ttfr_ms=50.0, ttfa_ms=900.0, ttft_tool_ms=950.0, e2e_ms=1000.0,
        reasoning_tokens=40, reasoning_source="usage", tool_calls=3, tool_calls_invalid=1,
    ).to_row()  # fmt: skip
    await store.insert("fathom.requests", REQUEST_COLUMNS, [[new[c] for c in REQUEST_COLUMNS]])
    query = (
        "SELECT sum(requests), sum(reasoning_tokens), sum(tool_calls), sum(tool_calls_invalid), "
        f"{HIST_P50.format('ttfa_ms')}, {HIST_P50.format('ttfr_ms')}, "
        f"{HIST_P50.format('ttft_tool_ms')} FROM fathom.{{}}"
    )
    for rollup in ("speed_1m", "speed_1h"):  # the views' new queries feed both rollups
        got = store.query_sync(query.format(rollup))
        assert got[0][:4] == (31, 40, 3, 1)
        assert got[0][4:] == pytest.approx((900.0, 50.0, 950.0), rel=HISTOGRAM_ERROR)


async def test_a_store_at_version_3_gains_histograms_backfilled_once(store: Store) -> None:
    assert apply_before(store, "004_") == MIGRATIONS[:3]
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)

    def rows(prefix: str, ttfts: list[float]) -> list[list[Any]]:
        return [
            request_values(Record(
                ts=minute + timedelta(seconds=i), request_id=f"{prefix}{i}", route="chat",
                model="m", deployment="d", stream=True, ttft_ms=ttft, e2e_ms=1000.0,
                output_tokens=2, error="upstream_http" if ttft < 0 else "",
            ))
            for i, ttft in enumerate(ttfts)
        ]  # fmt: skip

    # Nine answered requests, 100 .. 900 ms, and a failed one (its time is not latency).
    old = rows("old", [*range(100, 1000, 100), -1])
    columns = REQUEST_COLUMNS[: REQUEST_COLUMNS.index("tenant")]  # as at version 3
    await store.insert("fathom.requests", columns, [r[: len(columns)] for r in old])
    assert apply_schema(store) == MIGRATIONS[3:]
    p50 = HIST_P50.format("ttft_ms")
    query = "SELECT sum(requests), sum(output_tokens), " + p50 + " FROM fathom.{}"
    for rollup in ("speed_1m", "speed_1h"):
        got = store.query_sync(query.format(rollup))[0]
        assert got[:2] == (10, 20)  # the backfill adds no requests
        assert got[2] == pytest.approx(500.0, rel=HISTOGRAM_ERROR)
    await store.insert("fathom.requests", REQUEST_COLUMNS, rows("new", [5000.0] * 9))
    assert apply_schema(store) == []  # applied once: no second backfill
    # 18 answered: the 9th is 900. Old rows counted twice would make it 700; never, 5000.
    for rollup in ("speed_1m", "speed_1h"):
        got = store.query_sync(query.format(rollup))[0]
        assert got[:2] == (19, 38)
        assert got[2] == pytest.approx(900.0, rel=HISTOGRAM_ERROR)
