"""`fathom schema apply|render`: put the schema into a store, or print it for review."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from sidecar.store.client import StoreError, open_store
from sidecar.store.schema import DEFAULT_TTL_DAYS, Target, apply, render

DEFAULT_STORE = "chdb://./fathom-data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `fathom schema`."""
    parser.add_argument("action", choices=("apply", "render"))
    parser.add_argument("--store", help=f"store URL (env FATHOM_STORE; default {DEFAULT_STORE})")
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
    """Apply (exit 0, names what it applied) or print the rendered statements; 2 on errors."""
    try:
        target = Target(cluster=args.cluster, ttl_days=parse_ttl_days(args.ttl_days))
        if args.action == "render":
            print(render_text(target), end="")
            return 0
        store = open_store(args.store or os.environ.get("FATHOM_STORE") or DEFAULT_STORE)
        try:
            changed = apply(store, target)
        finally:
            store.close()
    except (StoreError, ValueError) as exc:
        print(f"fathom schema: {exc}", file=sys.stderr)
        return 2
    print(f"schema at {store.url.safe}: " + (", ".join(changed) or "up to date"))
    return 0


def render_text(target: Target) -> str:
    """Every statement of every migration, as a script `clickhouse-client -mn` could run."""
    out = []
    for migration in render(target):
        out.append(f"-- {migration.version:03d} {migration.name}\n")
        out.extend(statement + ";\n\n" for statement in migration.statements)
    return "".join(out)
