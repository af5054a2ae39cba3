"""`fathom schema apply|check|render|unlock`: the one owner of the schema.

`apply` is the only command that runs DDL against a server store (`fathom serve` and
`fathom probe` only check the version): it holds the schema lock, applies what is missing,
records it, and on a cluster checks that every host has replicated tables and the records.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from sidecar.store.client import Store, StoreError, open_store
from sidecar.store.schema import (
    DEFAULT_TTL_DAYS,
    SchemaBehind,
    Target,
    apply,
    cluster_checks,
    on_cluster,
    render,
    require,
    verify_cluster,
)
from sidecar.store.schema_lock import LOCK_WAIT_S, LockSettings, release

DEFAULT_STORE = "chdb://./fathom-data"
ACTIONS = {
    "apply": "apply missing migrations (under the schema lock on a server store)",
    "check": "exit 1 when the store lacks a migration of this release",
    "render": "print the statements",
    "unlock": "remove a lock left by an apply that died",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `fathom schema`."""
    parser.add_argument(
        "action", choices=tuple(ACTIONS), help="; ".join(f"{k}: {v}" for k, v in ACTIONS.items())
    )
    parser.add_argument(
        "--store", help="store URL with DDL rights (env FATHOM_SCHEMA_STORE, else FATHOM_STORE; "
        f"default {DEFAULT_STORE})",
    )  # fmt: skip
    parser.add_argument(
        "--lock-wait-s", type=float, default=LOCK_WAIT_S,
        help="how long apply waits for another apply's lock",
    )  # fmt: skip
    parser.add_argument(
        "--cluster", default="", help="ClickHouse cluster: ON CLUSTER, Replicated, Distributed"
    )
    defaults = ",".join(f"{t}={d}" for t, d in DEFAULT_TTL_DAYS.items())
    parser.add_argument(
        "--ttl-days",
        action="append",
        default=[],
        metavar="TABLE=DAYS",
        help=f"retention, repeatable or comma-separated (defaults {defaults}); "
        "apply also changes the TTL of existing tables named here",
    )


def parse_ttl_days(items: Sequence[str]) -> dict[str, int]:
    """`['requests=30', 'samples=7,quality=90']` -> {table: days}; says what is wrong."""
    ttl: dict[str, int] = {}
    for item in (part for raw in items for part in raw.split(",") if part):
        name, _, days = item.partition("=")
        if name not in DEFAULT_TTL_DAYS or not days.isdigit() or int(days) < 1:
            raise ValueError(
                f"--ttl-days {item!r}: expected TABLE=DAYS with TABLE one of "
                f"{', '.join(DEFAULT_TTL_DAYS)} and DAYS >= 1"
            )
        ttl[name] = int(days)
    return ttl


def run(args: argparse.Namespace) -> int:
    """0 done; 1 the store is behind (check) or a cluster host is not right (apply); 2 errors."""
    try:
        target = Target(cluster=args.cluster, ttl_days=parse_ttl_days(args.ttl_days))
        if args.action == "render":
            print(render_text(target), end="")
            return 0
        url = args.store or os.environ.get("FATHOM_SCHEMA_STORE") or os.environ.get("FATHOM_STORE")
        store = open_store(url or DEFAULT_STORE)
        try:
            return _act(store, args, target)
        finally:
            store.close()
    except SchemaBehind as exc:
        print(f"fathom schema: {exc}", file=sys.stderr)
        return 1
    except (StoreError, ValueError) as exc:
        print(f"fathom schema: {exc}", file=sys.stderr)
        return 2


def _act(store: Store, args: argparse.Namespace, target: Target) -> int:
    if args.action == "check":
        require(store)
        print(f"schema at {store.url.safe}: up to date")
        return 0
    if args.action == "unlock":
        release(store, on_cluster(args.cluster))
        print(f"schema at {store.url.safe}: unlocked")
        return 0
    # One process owns an embedded store's path: only a server store can have a rival.
    lock = LockSettings(wait_s=args.lock_wait_s) if store.url.kind == "http" else None
    changed = apply(store, target, lock)
    print(f"schema at {store.url.safe}: " + (", ".join(changed) or "up to date"))
    problems = verify_cluster(store, cluster_checks(args.cluster)) if args.cluster else []
    for problem in problems:
        print(f"fathom schema: {problem}", file=sys.stderr)
    return 1 if problems else 0


def render_text(target: Target) -> str:
    """Every statement of every migration, as a script `clickhouse-client -mn` could run."""
    out = []
    for migration in render(target):
        out.append(f"-- {migration.version:03d} {migration.name}\n")
        out.extend(statement + ";\n\n" for statement in migration.statements)
    return "".join(out)
