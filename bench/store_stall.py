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
from datetime import UTC, datetime
from pathlib import Path

import uvloop

from sidecar.record import REQUEST_COLUMNS, Record
from sidecar.store.client import Store, open_store
from sidecar.store.schema import apply_schema

TICK_S = 0.001


async def lateness(store: Store, rows: int, inserts: int) -> tuple[list[float], list[float]]:
    """(insert times, loop lateness) in ms over `inserts` batches of `rows` rows."""
    rng = random.Random(7)
    # Built before the clock starts: making rows on the loop would be lateness of our own.
    batches = [[request_row(rng, f"{k}-{i}") for i in range(rows)] for k in range(inserts)]
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


def request_row(rng: random.Random, request_id: str) -> list[object]:
    """A streamed request's row with every column filled."""
    tokens = rng.randint(1, 800)
    record = Record(
        ts=datetime.now(UTC), request_id=request_id, route="chat",
        model=f"model-{rng.randint(0, 3)}", deployment=f"deploy-{rng.randint(0, 2)}",
        origin="user", stream=True, status=200,
        finish_reason="stop", input_tokens=rng.randint(10, 4000), output_tokens=tokens,
        tokens_source="usage", ttfb_ms=rng.uniform(5, 50), ttft_ms=rng.uniform(20, 900),
        e2e_ms=rng.uniform(100, 30_000), itl_mean_ms=rng.uniform(5, 60),
        itl_p50_ms=rng.uniform(5, 60), itl_p99_ms=rng.uniform(20, 300),
        itl_max_ms=rng.uniform(50, 900), decode_tps=rng.uniform(10, 200), chunks=tokens,
        client=f"{rng.getrandbits(64):016x}", upstream="vllm", path="/v1/chat/completions",
        request_bytes=rng.randint(200, 40_000), response_bytes=rng.randint(200, 40_000),
    )  # fmt: skip
    row = record.to_row()
    return [row[c] for c in REQUEST_COLUMNS]


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
    with tempfile.TemporaryDirectory() as tmp:
        # One path each: a process holds one embedded engine, at one path.
        stores = {
            "in process": open_store(f"chdb://{Path(tmp) / 'here'}"),
            "own process": open_store(f"chdb://{Path(tmp) / 'child'}", isolated=True),
        }
        try:
            for store in stores.values():
                apply_schema(store)
            for rows in (int(r) for r in args.rows.split(",")):
                for mode, store in stores.items():
                    took, late = uvloop.run(lateness(store, rows, args.inserts))
                    median = sorted(took)[len(took) // 2]
                    print(f"{rows:<6} {mode:<14} {median:13.1f}   {quantiles(late)}")
        finally:
            for store in stores.values():
                store.close()


if __name__ == "__main__":
    main()
