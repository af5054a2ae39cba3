"""`fathom detect`: one round of regression detection, recorded in fathom.regressions.

Probe worker 0 runs the same round every detect_interval_s; as a command of its own, run by
a CronJob, detection goes on while worker 0 is Pending or gone. A finding already recorded
in the window is not written again, so the two may overlap.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime

from fathom import settings as fathom_settings
from fathom.commands.common import CommandError, open_store_setting, parse_time
from fathom.settings import Settings
from sidecar.config import ConfigError
from sidecar.store.client import Store, StoreError
from sidecar.store.schema import require


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `fathom detect`."""
    parser.add_argument("--store", help="store URL (default: the `store` setting, FATHOM_STORE)")
    parser.add_argument(
        "--at",
        type=parse_time,
        default=None,
        help="detect as of this ISO time instead of now, findings recorded at it (UTC if no zone)",
    )


def run(args: argparse.Namespace) -> int:
    """0 when the round ran (regressions or not: alerts and `fathom check` judge), 2 when not."""
    try:
        settings = fathom_settings.load(None)
        store = open_store_setting(args.store)
        return asyncio.run(_detect(store, settings, args.at or datetime.now(UTC)))
    except (ConfigError, CommandError, StoreError) as exc:
        print(f"fathom detect: {exc}", file=sys.stderr)
        return 2


async def _detect(store: Store, settings: Settings, at: datetime) -> int:
    from probes.detect import run_detection

    try:
        await store.call(require)
        outcomes = await run_detection(store, at, settings.detection)
    finally:
        store.close()
    found = [o for o in outcomes if o.regression]
    print(f"detection at {store.url.safe}: {len(outcomes)} tests, {len(found)} regressions")
    for o in found:
        model, deployment, probe = o.key
        print(f"regression: model={model} deployment={deployment} probe={probe} test={o.test}")
    return 0
