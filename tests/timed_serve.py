"""`fathom serve`, plus each request's t0 on CLOCK_MONOTONIC written to a file at exit.

    python -m tests.timed_serve T0_FILE [fathom serve flags]

The fidelity test's anchor: the simulator stamps its events on CLOCK_MONOTONIC too, so the
true TTFT and end-to-end time of a request are known from t0 without trusting the proxy's
own figures. t0 is read from the record's wall-clock `ts` (taken microseconds after t0) and
the wall-minus-monotonic offset when the request ends.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import uvloop

from sidecar import app, config
from sidecar.record import Record


def main(argv: list[str]) -> int:
    """Serve until SIGTERM, then write {request_id: t0} as JSON."""
    path, flags = Path(argv[0]), argv[1:]
    parser = argparse.ArgumentParser()
    app.add_arguments(parser)
    settings = config.load(parser.parse_args(flags))
    t0: dict[str, float] = {}

    def listen(record: Record) -> None:
        t0[record.request_id] = record.ts.timestamp() - (time.time() - time.monotonic())

    uvloop.run(app.serve_until_signalled(settings, listen))
    path.write_text(json.dumps(t0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
