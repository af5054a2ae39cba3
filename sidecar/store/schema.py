"""Numbered `.sql` migrations: rendered for one server or a cluster, applied once each."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from importlib.resources.abc import Traversable

from sidecar.store.client import Store, StoreError
from sidecar.store.schema_lock import LockSettings, held

# Retention in days per table; `--ttl-days` overrides any of them at apply time.
DEFAULT_TTL_DAYS: Mapping[str, int] = {
    "requests": 30,
    "samples": 7,
    "quality": 180,
    "regressions": 180,
    "requests_1m": 180,  # per-minute speed per origin, small
    "speed_1m": 30,  # what alerts and panels over ranges up to a day read
    "speed_1h": 365,  # what panels over longer ranges read: 24 rows per series a day
}
# On a cluster each table is a Distributed one over `<table>_local`, sharded by a hash of
# the row (never rand()): a batch replayed after a crash then splits into the same blocks
# per shard, so its deduplication token still matches.
SHARDING_KEYS: Mapping[str, str] = {
    "requests": "cityHash64(request_id)",
    "samples": "cityHash64(request_id)",
    "quality": "cityHash64(request_id, item_id)",
    "regressions": "cityHash64(model, deployment, probe)",
    "requests_1m": "cityHash64(model, deployment)",
    "speed_1m": "cityHash64(model, deployment)",
    "speed_1h": "cityHash64(model, deployment)",
}
DEDUP_WINDOW = 10_000  # inserts per table remembered by insert_deduplication_token
_PLACEHOLDER = re.compile(r"\{(on_cluster|local|dedup_window|engine:\w+|agg_engine:\w+|ttl:\w+)\}")
_FILE = re.compile(r"^(\d{3})_[\w-]+\.sql$")
_TTL = re.compile(r"\bTTL (.+?) \+ toIntervalDay\((\d+)\)")
MIGRATIONS_TABLE = "fathom.schema_migrations"
_NEW_KEY = re.compile(r",\s*MODIFY ORDER BY \([^)]*\)")


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema file, rendered into statements."""

    version: int
    name: str
    statements: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Target:
    """What to render for: one server (cluster '') or the named cluster; TTL overrides."""

    cluster: str = ""
    ttl_days: Mapping[str, int] = field(default_factory=dict)

    def ttl(self, table: str) -> int:
        """Retention in days of `table`: the override, else the default."""
        return int(self.ttl_days.get(table, DEFAULT_TTL_DAYS[table]))


class SchemaBehind(StoreError):
    """The store lacks migrations this release needs; the message says how to apply them."""


def _files() -> list[Traversable]:
    return sorted(
        (f for f in resources.files("sidecar.store").joinpath("schema").iterdir()
         if _FILE.match(f.name)),
        key=lambda f: f.name,
    )  # fmt: skip


def known() -> dict[int, str]:
    """This release's migrations: version -> file name."""
    return {int(f.name[:3]): f.name for f in _files()}


def render(target: Target) -> list[Migration]:
    """Every migration, in order, rendered for the target (version 0 is the bookkeeping)."""
    out = [Migration(0, "migrations", _migrations_table(target))]
    for f in _files():
        sql = _PLACEHOLDER.sub(lambda m: _fill(m.group(1), target), _uncomment(f.read_text()))
        statements = [s.strip() for s in sql.split(";\n") if s.strip()]
        if target.cluster:
            statements = _distributed(statements, target.cluster)
        out.append(Migration(int(f.name[:3]), f.name, tuple(statements)))
    return out


def _fill(name: str, target: Target) -> str:
    kind, _, table = name.partition(":")
    cluster = target.cluster
    if kind == "on_cluster":
        return f"ON CLUSTER {_ident(cluster)}" if cluster else ""
    if kind == "local":
        return "_local" if cluster else ""
    if kind == "ttl":
        return str(target.ttl(table))
    if kind == "dedup_window":
        setting = "replicated" if cluster else "non_replicated"
        return f"{setting}_deduplication_window = {DEDUP_WINDOW}"
    engine = "AggregatingMergeTree" if kind == "agg_engine" else "MergeTree"
    if not cluster:
        return engine
    path = f"'/clickhouse/tables/{{shard}}/fathom/{table}_local', '{{replica}}'"
    return f"Replicated{engine}({path})"


def _distributed(statements: list[str], cluster: str) -> list[str]:
    """The statements for a cluster: each ALTER of a sharded `_local` table followed at once by
    the same change on its Distributed table (a later statement, such as a backfill through
    the Distributed tables, needs the columns there), then the Distributed table in front of
    each sharded `_local` table they create."""
    out = []
    for s in statements:
        out.append(s)
        m = re.match(r"ALTER TABLE fathom\.(\w+)_local ", s)
        if m and m.group(1) in SHARDING_KEYS:
            same = s.replace(f"fathom.{m.group(1)}_local ", f"fathom.{m.group(1)} ", 1)
            out.append(_NEW_KEY.sub("", same))  # a Distributed table has no sorting key
    created = [
        m.group(1)
        for s in statements
        if (m := re.search(r"TABLE IF NOT EXISTS fathom\.(\w+)_local", s))
    ]
    return out + [
        f"CREATE TABLE IF NOT EXISTS fathom.{t} ON CLUSTER {_ident(cluster)} AS fathom.{t}_local "
        f"ENGINE = Distributed({_ident(cluster)}, fathom, {t}_local, {SHARDING_KEYS[t]})"
        for t in created
    ]


def _migrations_table(target: Target) -> tuple[str, str]:
    on_cluster = f" ON CLUSTER {_ident(target.cluster)}" if target.cluster else ""
    # One replication path for the whole cluster: a migration is recorded once, not per shard.
    engine = (
        "ReplicatedMergeTree('/clickhouse/tables/fathom/schema_migrations', '{replica}')"
        if target.cluster
        else "MergeTree"
    )
    return (
        f"CREATE DATABASE IF NOT EXISTS fathom{on_cluster}",
        f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE}{on_cluster} "
        f"(version UInt32, name String, applied_at DateTime('UTC')) "
        f"ENGINE = {engine} ORDER BY version",
    )


def _uncomment(sql: str) -> str:
    """The script without its `--` comment lines (which may mention placeholders)."""
    lines = [line for line in sql.split("\n") if not line.lstrip().startswith("--")]
    return "\n".join(lines).strip().rstrip(";")


def on_cluster(cluster: str) -> str:
    """' ON CLUSTER name' for a cluster, '' for one server; the name is checked."""
    return f" ON CLUSTER {_ident(cluster)}" if cluster else ""


def _ident(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][\w-]*", name):
        raise ValueError(f"cluster name {name!r} must be letters, digits, '_' or '-'")
    return f"`{name}`" if "-" in name else name


def apply(
    store: Store, target: Target | None = None, lock: LockSettings | None = None
) -> list[str]:
    """Apply every migration not yet recorded, then any TTL override; returns what changed.

    `lock`: hold the schema lock meanwhile (a server store, where several appliers may run).
    """
    target = target or Target()
    unknown = set(target.ttl_days) - set(DEFAULT_TTL_DAYS)
    if unknown:
        raise ValueError(f"no TTL for {sorted(unknown)}: tables are {sorted(DEFAULT_TTL_DAYS)}")
    migrations = render(target)
    database, bookkeeping = migrations[0].statements
    store.command_sync(database)  # the lock table lives in it
    with held(store, on_cluster(target.cluster), lock) if lock else contextlib.nullcontext():
        store.command_sync(bookkeeping)
        done = set(_recorded(store))
        applied = []
        for migration in migrations[1:]:
            if migration.version in done:
                continue
            for statement in migration.statements:
                store.command_sync(statement)
            row = (migration.version, migration.name, datetime.now(UTC))
            store.insert_sync(MIGRATIONS_TABLE, ("version", "name", "applied_at"), [row])
            applied.append(migration.name)
        return applied + _retune_ttls(store, target)


def _recorded(store: Store) -> list[int]:
    """Versions the store has recorded; none when it has no bookkeeping table yet."""
    exists = store.query_sync(
        "SELECT count() FROM system.tables WHERE database = 'fathom' AND name = 'schema_migrations'"
    )
    if not exists[0][0]:
        return []
    return [int(row[0]) for row in store.query_sync(f"SELECT version FROM {MIGRATIONS_TABLE}")]


def missing(store: Store) -> list[str]:
    """This release's migrations the store has not recorded, oldest first."""
    done = set(_recorded(store))
    return [name for version, name in sorted(known().items()) if version not in done]


def require(store: Store) -> None:
    """Raise SchemaBehind unless every migration of this release is recorded in the store.

    Versions newer than this release are fine: during an upgrade the schema goes first, and
    old pods keep writing until they are replaced (migrations only add).
    """
    lacking = missing(store)
    if lacking:
        have = max(_recorded(store), default=0)
        need = max(known())
        raise SchemaBehind(
            f"the store at {store.url.safe} is at schema version {have}, this release needs "
            f"{need} (missing {', '.join(lacking)}): apply the schema first with "
            f"`fathom schema apply --store URL [--cluster NAME]` (in Kubernetes, this "
            f"release's schema Job), then start the new pods"
        )


def _retune_ttls(store: Store, target: Target) -> list[str]:
    """ALTER the TTL of tables named in the overrides whose current TTL differs."""
    suffix = "_local" if target.cluster else ""
    on_cluster = f" ON CLUSTER {_ident(target.cluster)}" if target.cluster else ""
    rows = store.query_sync("SELECT name, engine_full FROM system.tables WHERE database = 'fathom'")
    current = {name: m for name, engine in rows if (m := _TTL.search(engine))}
    changed = []
    for table in sorted(target.ttl_days):
        found = current.get(table + suffix)
        if found is None or int(found.group(2)) == target.ttl(table):
            continue
        store.command_sync(
            f"ALTER TABLE fathom.{table}{suffix}{on_cluster} "
            f"MODIFY TTL {found.group(1)} + INTERVAL {target.ttl(table)} DAY"
        )
        changed.append(f"ttl {table}={target.ttl(table)}d")
    return changed


def apply_schema(store: Store, cluster: str | None = None) -> list[str]:
    """`apply` with the default TTLs (never changes a TTL set earlier); what others import."""
    return apply(store, Target(cluster=cluster or ""))


# Every host's Fathom tables that are not replicated (an older sidecar's single-server DDL
# there), and every host's recorded versions.
_PLAIN_TABLES = """
SELECT hostName() AS host, name, engine
FROM {tables}
WHERE database = 'fathom' AND engine LIKE '%MergeTree' AND engine NOT LIKE 'Replicated%'
ORDER BY host, name
"""
_HOST_VERSIONS = """
SELECT hostName() AS host, arraySort(groupUniqArray(version))
FROM {migrations}
GROUP BY host
ORDER BY host
"""


@dataclass(frozen=True, slots=True)
class ClusterChecks:
    """The statements `verify_cluster` runs: wait for the bookkeeping to replicate, then ask
    every host. On one server (tests) `sync` is '' and the sources are local tables."""

    sync: str
    plain_tables: str
    host_versions: str


def cluster_checks(cluster: str) -> ClusterChecks:
    """The checks over every replica of `cluster`."""
    name = _ident(cluster)
    return ClusterChecks(
        sync=f"SYSTEM SYNC REPLICA ON CLUSTER {name} {MIGRATIONS_TABLE}",
        plain_tables=_PLAIN_TABLES.format(tables=f"clusterAllReplicas({name}, system.tables)"),
        host_versions=_HOST_VERSIONS.format(
            migrations=f"clusterAllReplicas({name}, {MIGRATIONS_TABLE})"
        ),
    )


def local_checks() -> ClusterChecks:
    """The same checks against the one server the store is (what tests can run)."""
    return ClusterChecks(
        "", _PLAIN_TABLES.format(tables="system.tables"),
        _HOST_VERSIONS.format(migrations=MIGRATIONS_TABLE),
    )  # fmt: skip


def verify_cluster(store: Store, checks: ClusterChecks) -> list[str]:
    """What is wrong on any host: unreplicated Fathom tables, migrations not recorded there."""
    if checks.sync:
        store.command_sync(checks.sync)
    problems = [
        f"{host}: fathom.{name} is {engine}, not replicated (created by an older sidecar's "
        f"single-server DDL): move its rows into the replicated table, then drop it"
        for host, name, engine in store.query_sync(checks.plain_tables)
    ]
    need = sorted(known())
    for host, recorded in store.query_sync(checks.host_versions):
        lacking = [v for v in need if v not in set(recorded)]
        if lacking:
            problems.append(f"{host}: migrations {lacking} are not recorded there")
    return problems
