"""Numbered `.sql` migrations: rendered for one server or a cluster, applied once each."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources

from sidecar.store.client import Store

DEFAULT_TTL_DAYS: Mapping[str, int] = {"requests": 30, "samples": 7, "quality": 180}
# Tables that a cluster reads and writes through Distributed tables over the `_local` ones.
DISTRIBUTED = ("requests", "samples", "quality", "regressions", "requests_1m")
AGGREGATING = ("requests_1m",)
_PLACEHOLDER = re.compile(r"\{(on_cluster|local|engine:\w+|agg_engine:\w+|ttl:\w+)\}")
_FILE = re.compile(r"^(\d{3})_[\w-]+\.sql$")
MIGRATIONS_TABLE = "fathom.schema_migrations"


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema file, rendered into statements."""

    version: int
    name: str
    statements: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Target:
    """What to render for: one server (cluster '') or the named cluster, and the TTLs."""

    cluster: str = ""
    ttl_days: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_TTL_DAYS))


def render(target: Target) -> list[Migration]:
    """Every migration, in order, rendered for the target."""
    files = sorted(
        (f for f in resources.files("sidecar.store").joinpath("schema").iterdir()
         if _FILE.match(f.name)),
        key=lambda f: f.name,
    )  # fmt: skip
    out = [Migration(0, "migrations", _migrations_table(target))]
    for f in files:
        sql = _PLACEHOLDER.sub(lambda m: _fill(m.group(1), target), f.read_text())
        statements = [s for s in (_strip(p) for p in sql.split(";\n")) if s]
        if target.cluster:
            statements += _distributed(statements, target.cluster)
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
        return str(int(target.ttl_days.get(table, DEFAULT_TTL_DAYS.get(table, 30))))
    engine = "AggregatingMergeTree" if kind == "agg_engine" else "MergeTree"
    if not cluster:
        return engine
    path = f"'/clickhouse/tables/{{shard}}/fathom/{table}_local', '{{replica}}'"
    return f"Replicated{engine}({path})"


def _distributed(statements: list[str], cluster: str) -> list[str]:
    """The Distributed table in front of each sharded `_local` table the statements create."""
    created = {
        m.group(1)
        for s in statements
        if (m := re.search(r"TABLE IF NOT EXISTS fathom\.(\w+)_local", s))
    }
    return [
        f"CREATE TABLE IF NOT EXISTS fathom.{t} ON CLUSTER {_ident(cluster)} AS fathom.{t}_local "
        f"ENGINE = Distributed({_ident(cluster)}, fathom, {t}_local, cityHash64(model))"
        for t in DISTRIBUTED
        if t in created
    ]


def _migrations_table(target: Target) -> tuple[str, str]:
    on_cluster = f" ON CLUSTER {_ident(target.cluster)}" if target.cluster else ""
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


def _strip(sql: str) -> str:
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return "\n".join(lines).strip().rstrip(";").strip()


def _ident(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][\w-]*", name):
        raise ValueError(f"cluster name {name!r} must be letters, digits, '_' or '-'")
    return f"`{name}`" if "-" in name else name


def apply(store: Store, target: Target | None = None) -> list[str]:
    """Apply every migration not yet recorded; returns the names applied (idempotent)."""
    target = target or Target()
    migrations = render(target)
    for statement in migrations[0].statements:
        store.command_sync(statement)
    done = {row[0] for row in store.query_sync(f"SELECT version FROM {MIGRATIONS_TABLE}")}
    applied = []
    for migration in migrations[1:]:
        if migration.version in done:
            continue
        for statement in migration.statements:
            store.command_sync(statement)
        row = (migration.version, migration.name, datetime.now(UTC))
        store.insert_sync(MIGRATIONS_TABLE, ("version", "name", "applied_at"), [row])
        applied.append(migration.name)
    return applied


def apply_schema(store: Store, cluster: str | None = None) -> list[str]:
    """`apply` with default TTLs; the name other modules import."""
    return apply(store, Target(cluster=cluster or ""))
