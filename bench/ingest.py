"""Rows/s into the embedded store through the writer, with the queue bounded, and what it costs.

    .venv/bin/python -m bench.ingest [--rows 1000000] [--into store|spool] [--dir DIR]

Realistic `fathom.requests` rows (every column filled, unique request ids, a few models and
deployments, timestamps over the last minutes) are submitted as fast as the writer drains
them: the producer pauses whenever the queue is within one batch of its bound, so nothing is
dropped and the figure is the writer's sustained rate. `--into spool` closes the store first:
the rate at which an outage is absorbed on disk. The engine runs in its own process, as
`fathom serve` runs it. Printed: rows/s, drops, CPU per row (this process and the engine's),
RSS of both at peak, the data directory's size, and the chdb package's size on disk.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import uvloop

from sidecar.record import Record
from sidecar.store.client import Store
from sidecar.store.writer import Writer, WriterSettings
from tests.support.store import embedded

TEMPLATES = 4093  # prime, so templates and noise do not repeat in step
NOISE = 65536


def templates(rng: random.Random) -> list[dict[str, Any]]:
    """Varied request rows; the producer copies one per submit and fills in what is unique."""
    out = []
    for i in range(TEMPLATES):
        stream = rng.random() < 0.8
        tokens = rng.randint(1, 800)
        record = Record(
            ts=datetime.now(UTC), request_id="", route="chat", model=f"model-{i % 4}",
            deployment=f"deploy-{i % 3}", origin="user" if i % 20 else "probe", stream=stream,
            status=200, finish_reason="stop", input_tokens=rng.randint(10, 4000),
            output_tokens=tokens, tokens_source="usage",
            ttft_ms=rng.uniform(20, 900) if stream else None,
            itl_mean_ms=rng.uniform(5, 60) if stream else None,
            itl_p50_ms=rng.uniform(5, 60) if stream else None,
            itl_p99_ms=rng.uniform(20, 300) if stream else None,
            itl_max_ms=rng.uniform(50, 900) if stream else None,
            decode_tps=rng.uniform(10, 200) if stream else None, chunks=tokens if stream else 0,
            sampled=rng.random() < 0.05, client=f"{rng.getrandbits(128):032x}",
            upstream="http://vllm:8000", path="/v1/chat/completions",
            request_bytes=rng.randint(200, 40_000), response_bytes=rng.randint(200, 40_000),
        )  # fmt: skip
        out.append(record.to_row())
    return out


async def produce(writer: Writer, rows: int, rng: random.Random) -> float:
    """Submit `rows` rows, never more than the queue holds (so none is dropped).

    Returns the CPU seconds the event loop's thread spent (making rows and submitting them).
    """
    cpu_started = time.thread_time()
    pool = templates(rng)
    noise = [rng.uniform(5, 30_000) for _ in range(NOISE)]
    start = datetime.now(UTC) - timedelta(minutes=10)
    room = writer.settings.queue_rows - writer.settings.batch_rows
    for chunk in range(0, rows, 1000):
        while writer.queue_depth > room:  # noqa: ASYNC110 - only this bench ever waits
            await asyncio.sleep(0.001)
        for i in range(chunk, min(chunk + 1000, rows)):
            # What is unique per request in production is unique here too: id, time, timings.
            row = dict(pool[i % TEMPLATES])
            row["request_id"] = f"{rng.getrandbits(128):032x}"  # as sidecar.proxy makes them
            row["ts"] = start + timedelta(microseconds=i * 600)
            row["e2e_ms"] = noise[i % NOISE]
            row["ttfb_ms"] = noise[(i * 7) % NOISE] / 100
            writer.submit("fathom.requests", row)
        await asyncio.sleep(0)
    return time.thread_time() - cpu_started


async def run(args: argparse.Namespace, store: Store, workdir: Path) -> dict[str, Any]:
    """Ingest and time it; the figures printed below."""
    settings = WriterSettings(
        queue_rows=args.queue_rows, batch_rows=args.batch_rows,
        spool_dir=str(workdir / "spool"), spool_max_bytes=64 * 1024**3,
    )  # fmt: skip
    writer = Writer(store, settings)
    await writer.start()
    started, cpu_started = time.perf_counter(), time.process_time()
    loop_cpu = await produce(writer, args.rows, random.Random(7))
    target = writer.rows_spooled if args.into == "spool" else writer.rows_written
    while target + writer.queue_depth < args.rows or writer.queue_depth:
        await asyncio.sleep(0.005)
        target = writer.rows_spooled if args.into == "spool" else writer.rows_written
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    await writer.stop(60.0)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,  # every thread of this process (the engine is a child)
        "loop_cpu_seconds": loop_cpu,
        "dropped": sum(writer.rows_dropped.values()),
        "spool_bytes": writer.spool_bytes,
    }


def du(path: Path) -> int:
    """Bytes on disk under `path` (allocated blocks, like `du`)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with_stat = os.lstat(os.path.join(root, name))
            total += with_stat.st_blocks * 512
    return total


def chdb_package_bytes() -> int:
    """The installed chdb package (the whole ClickHouse engine) on disk."""
    import chdb

    return du(Path(chdb.__file__).parent)


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--into", choices=("store", "spool"), default="store")
    parser.add_argument("--queue-rows", type=int, default=100_000)
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--dir", help="working directory (default: a temporary one, removed)")
    args = parser.parse_args()
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="fathom-ingest-"))
    me = psutil.Process()
    rss_start = me.memory_info().rss
    store = embedded(workdir / "db", isolated=True)  # as `fathom serve` runs it
    try:
        rss_open = me.memory_info().rss
        if args.into == "spool":
            store.close()  # a closed client: every insert fails, every batch is spooled
        figures = uvloop.run(run(args, store, workdir))
        if args.into == "store":
            [(count, unique)] = store.query_sync(
                "SELECT count(), uniqExact(request_id) FROM fathom.requests"
            )
            assert count == unique == args.rows, (count, unique)
            store.command_sync("OPTIMIZE TABLE fathom.requests FINAL")
            figures["parts"] = store.query_sync(
                "SELECT table, sum(bytes_on_disk), sum(data_uncompressed_bytes) "
                "FROM system.parts WHERE active AND database = 'fathom' GROUP BY table "
                "ORDER BY table"
            )
    finally:
        store.close()
    # The engine child has exited (store.close() waits for it): its peak and CPU are known.
    engine = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures["engine_cpu_seconds"] = engine.ru_utime + engine.ru_stime
    figures["engine_peak"] = engine.ru_maxrss * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report(args, figures, rss_start, rss_open, peak, workdir)
    if not args.dir:
        shutil.rmtree(workdir)


def report(
    args: argparse.Namespace,
    figures: dict[str, Any],
    rss_start: int,
    rss_open: int,
    peak: int,
    workdir: Path,
) -> None:
    """Print the figures, one per line."""
    mb = 1024**2
    rate = args.rows / figures["seconds"]
    print(f"rows              {args.rows} into the {args.into} "
          f"(batch {args.batch_rows}, queue bound {args.queue_rows})")  # fmt: skip
    seconds, dropped = figures["seconds"], figures["dropped"]
    print(f"rows/s            {rate:,.0f} ({seconds:.2f} s), dropped {dropped:.0f}")
    cpu_us = (figures["cpu_seconds"] + figures["engine_cpu_seconds"]) / args.rows * 1e6
    engine_us = figures["engine_cpu_seconds"] / args.rows * 1e6
    load = os.getloadavg()[0]
    loop_us = figures["loop_cpu_seconds"] / args.rows * 1e6
    print(f"CPU               {cpu_us:.1f} us/row in both processes ({1e6 / cpu_us:,.0f} rows per "
          f"CPU-second); load average {load:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    print(f"  of which        {engine_us:.1f} us/row in the engine process, {loop_us:.1f} us/row "
          "on the event loop (this bench making rows and submitting them)")  # fmt: skip
    print(f"RSS               this process {rss_start / mb:.0f} MiB at start, {rss_open / mb:.0f} "
          f"MiB after the schema, {peak / mb:.0f} MiB peak; the engine process "
          f"{figures['engine_peak'] / mb:.0f} MiB peak")  # fmt: skip
    if args.into == "store":
        data = du(workdir / "db")
        print(f"data dir          {data / mb:.1f} MiB by du, merged parts not yet deleted included "
              f"({data / args.rows:.1f} bytes/row); active parts:")  # fmt: skip
        for table, packed, raw in figures["parts"]:
            print(f"  {table:17s} {packed / mb:7.1f} MiB on disk ({raw / mb:.1f} MiB uncompressed)")
    else:
        print(f"spool             {figures['spool_bytes'] / mb:.1f} MiB "
              f"({figures['spool_bytes'] / args.rows:.0f} bytes/row)")  # fmt: skip
    print(f"chdb package      {chdb_package_bytes() / mb:.0f} MiB on disk")


if __name__ == "__main__":
    main()
