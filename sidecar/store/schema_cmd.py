"""`fathom schema apply|render`: put the schema into a store, or print it for review."""

from __future__ import annotations

import argparse
import os
import sys

from sidecar.store.client import StoreError, open_store
from sidecar.store.schema import DEFAULT_TTL_DAYS, Target, apply, render


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `fathom schema`."""
    parser.add_argument("action", choices=("apply", "render"))
    parser.add_argument(
        "--store", help="store URL (env FATHOM_STORE; default chdb://./fathom-data)"
    )
    parser.add_argument("--cluster", default="", help="render/apply for this ClickHouse cluster")
    parser.add_argument(
        "--ttl-days",
        default="",
        help="retention overrides, e.g. requests=30,samples=7,quality=180",
    )


def _ttl(raw: str) -> dict[str, int]:
    ttl = dict(DEFAULT_TTL_DAYS)
    for item in filter(None, raw.split(",")):
        name, _, days = item.partition("=")
        if name not in ttl or not days.isdigit() or int(days) < 1:
            raise ValueError(f"--ttl-days item {item!r}: expected one of {sorted(ttl)}=DAYS")
        ttl[name] = int(days)
    return ttl


def run(args: argparse.Namespace) -> int:
    """Apply (exit 0, names what it applied) or print the rendered statements."""
    try:
        target = Target(cluster=args.cluster, ttl_days=_ttl(args.ttl_days))
        if args.action == "render":
            for migration in render(target):
                print(f"-- {migration.version:03d} {migration.name}")
                for statement in migration.statements:
                    print(statement + ";\n")
            return 0
        url = args.store or os.environ.get("FATHOM_STORE") or "chdb://./fathom-data"
        store = open_store(url)
        try:
            applied = apply(store, target)
        finally:
            store.close()
    except (StoreError, ValueError) as exc:
        print(f"fathom schema: {exc}", file=sys.stderr)
        return 2
    print(f"schema at {store.url.safe}: " + (", ".join(applied) or "up to date"))
    return 0
