"""How long store inserts stall the event loop: chDB in this process vs in its own process.

    .venv/bin/python -m bench.store_stall [--rows 200,2000] [--inserts 20]

A task on the loop asks to wake every millisecond and notes how late it wakes while batches
of realistic request rows are inserted through `Store` (one every 50 ms). The proxy stamps
token times on this loop, so its lateness is timing error. Printed per batch size and mode:
insert time and loop lateness p50 / p99 / max in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

import uvloop

from bench.ingest import templates
from sidecar.record import REQUEST_COLUMNS
from sidecar.store.client import Store
from tests.support.store import opened

TICK_S = 0.001


async def lateness(store: Store, rows: int, inserts: int) -> tuple[list[float], list[float]]:
    """(insert times, loop lateness) in ms over `inserts` batches of `rows` rows."""
    pool = templates(random.Random(7))

    def row(n: int) -> list[object]:
        values = {**pool[n % len(pool)], "request_id": f"r{n}"}
        return [values[c] for c in REQUEST_COLUMNS]

    # Built before the clock starts: making rows on the loop would be lateness of our own.
    batches = [[row(k * rows + i) for i in range(rows)] for k in range(inserts)]
    late: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        while not done.is_set():
            start = time.perf_counter()
            await asyncio.sleep(TICK_S)
            late.append(max(0.0, time.perf_counter() - start - TICK_S) * 1e3)

    ticker = asyncio.create_task(tick())
    took = []
    for values in batches:
        started = time.perf_counter()
        await store.insert("fathom.requests", REQUEST_COLUMNS, values)
        took.append((time.perf_counter() - started) * 1e3)
        await asyncio.sleep(0.05)
    done.set()
    await ticker
    return took, late


def quantiles(values: list[float]) -> str:
    """p50 / p99 / max."""
    ordered = sorted(values)
    p50, p99 = (ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.5, 0.99))
    return f"{p50:6.2f} / {p99:6.2f} / {ordered[-1]:6.2f}"


def main() -> None:
    """Measure both modes for each batch size and print a line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", default="200,2000", help="batch sizes, comma-separated")
    parser.add_argument("--inserts", type=int, default=20)
    args = parser.parse_args()
    print("rows   engine         insert ms p50   loop lateness ms p50 / p99 / max")
    with (
        tempfile.TemporaryDirectory() as tmp,
        # One path each: a process holds one embedded engine, at one path.
        opened(Path(tmp) / "here", schema=True) as here,
        opened(Path(tmp) / "child", schema=True, isolated=True) as child,
    ):
        stores = {"in process": here, "own process": child}
        for rows in (int(r) for r in args.rows.split(",")):
            for mode, store in stores.items():
                took, late = uvloop.run(lateness(store, rows, args.inserts))
                median = sorted(took)[len(took) // 2]
                print(f"{rows:<6} {mode:<14} {median:13.1f}   {quantiles(late)}")


if __name__ == "__main__":
    main()
