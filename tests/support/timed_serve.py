"""`fathom serve`, plus each request's t0 on CLOCK_MONOTONIC written to a file at exit.

    python -m tests.support.timed_serve T0_FILE [--awake] [fathom serve flags]

The fidelity test's anchor: the simulator stamps its events on CLOCK_MONOTONIC too, so the
true TTFT and end-to-end time of a request are known from t0 without trusting the proxy's
own figures. t0 is read from the record's wall-clock `ts` (taken microseconds after t0) and
the wall-minus-monotonic offset when the request ends.

--awake keeps the event loop from ever sleeping (a task that only yields), so the proxy's
core never idles: a virtual CPU that halts takes milliseconds to wake on this project's VMs,
and this separates that from the proxy's own timing error. Never in production: it burns
the core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import uvloop

from fathom import settings as config
from fathom.commands import serve as app
from fathom.service import Listener
from sidecar.record import Record


def main(argv: list[str]) -> int:
    """Serve until SIGTERM, then write {request_id: t0} as JSON."""
    path, flags = Path(argv[0]), argv[1:]
    awake = "--awake" in flags
    parser = argparse.ArgumentParser()
    app.add_arguments(parser)
    settings = config.load(parser.parse_args([f for f in flags if f != "--awake"]))
    t0: dict[str, float] = {}

    def listen(record: Record) -> None:
        t0[record.request_id] = record.ts.timestamp() - (time.time() - time.monotonic())

    uvloop.run(serve(settings, listen, awake))
    path.write_text(json.dumps(t0))
    return 0


async def serve(settings: config.Settings, listen: Listener, awake: bool) -> None:
    """`fathom serve` until signalled, with the loop kept busy if `awake`."""
    spinner = asyncio.create_task(_spin()) if awake else None
    await app.serve_until_signalled(settings, listen)
    if spinner is not None:
        spinner.cancel()


async def _spin() -> None:
    while True:  # noqa: ASYNC110 - never waiting on anything is the point
        await asyncio.sleep(0)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
