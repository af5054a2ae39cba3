"""Resident memory of a deployed sidecar over a million requests: is it bounded?

    .venv/bin/python -m bench.memory [--requests 1000000] [--every 100000] [--concurrency 64]

Runs `fathom serve --probes` as deployed (embedded chDB store, default sampling, the probe
worker in-process with its scorer on CPU) in front of the simulator and sends non-streamed
chat completions (16 tokens, answered at once) and, one in ten, streamed ones (8 events,
1 ms apart). Prints the RSS of the serve process (proxy and probe worker) and of the store
engine process after a warm-up of `--every` requests and then every `--every` requests.
Bounded means levelled off: exit status 1 when either process's peak over the second half of
the checkpoints after warm-up tops its peak over the first half by more than 5 % and 10 MiB. A
leak keeps growing and fails that; the embedded engine's caches and merges rise from warm-up
to a plateau, which passes (both are printed: warm-up, first-half and second-half peaks).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil
import uvloop

from fathom import spawn
from tests.support.processes import serve_command, simulate_command
from tests.support.scrape import counters_reach

BODY = {"model": "sim", "messages": [{"role": "user", "content": "Say something."}]}
PLAIN = {"x-sim-ttft-ms": "0", "x-sim-itl-ms": "0", "x-sim-tokens": "16"}
STREAM = {"x-sim-ttft-ms": "0", "x-sim-itl-ms": "1", "x-sim-tokens": "8"}
MIB = 1024 * 1024


async def load(url: str, count: int, concurrency: int, offset: int) -> int:
    """`count` requests from `concurrency` clients; returns how many failed."""
    failed = 0
    left = iter(range(offset, offset + count))

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal failed
        for i in left:
            stream = i % 10 == 0
            body, headers = ({**BODY, "stream": True}, STREAM) if stream else (BODY, PLAIN)
            try:
                async with session.post(url, json=body, headers=headers) as resp:
                    await resp.read()
                    failed += resp.status != 200
            except aiohttp.ClientError:
                failed += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return failed


def rss(process: psutil.Process) -> float:
    return float(process.memory_info().rss) / MIB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    sim_argv = simulate_command("--model", "sim")
    with (
        tempfile.TemporaryDirectory(prefix="fathom-memory-") as work,
        spawn.running(sim_argv, ["server"]) as sim,
    ):
        serve_argv = serve_command(
            sim.addresses["server"], Path(work) / "data", "--probes", "--log-level", "WARNING"
        )
        env = {"FATHOM_SPOOL_DIR": str(Path(work) / "spool"), "HF_HUB_OFFLINE": "1"}
        with spawn.running(serve_argv, ["proxy", "admin"], env) as serve:
            url = serve.addresses["proxy"] + "/v1/chat/completions"
            proxy = psutil.Process(serve.process.pid)
            print("| requests | serve RSS MiB (proxy + probe worker) | engine RSS MiB | failed "
                  "| requests/s |\n|---|---|---|---|---|")  # fmt: skip
            sent, failed, seen = 0, 0, []
            while sent < args.requests + args.every:
                start = time.perf_counter()
                failed += uvloop.run(load(url, args.every, args.concurrency, sent))
                rate = args.every / (time.perf_counter() - start)
                if sent == 0:
                    # warm-up ends once the worker has loaded its scorer and scored a sample
                    scored = {"fathom_probes_samples_scored_total": 1.0}
                    uvloop.run(counters_reach(serve.addresses["admin"], scored, within=300))
                sent += args.every
                [engine] = proxy.children()
                now = (rss(proxy), rss(engine))
                seen.append(now)
                label = "warm-up" if sent == args.every else f"{sent - args.every:,}"
                print(f"| {label} | {now[0]:.0f} | {now[1]:.0f} | {failed} | {rate:,.0f} |",
                      flush=True)  # fmt: skip
    return verdict(seen[0], seen[1:])


def verdict(warm: tuple[float, float], after: list[tuple[float, float]]) -> int:
    """Print each process's warm-up RSS and its peaks over the two halves of `after`; 1 when
    a second-half peak tops the first half's by more than 5 % and 10 MiB (still growing)."""
    half = max(1, len(after) // 2)
    grew = False
    for i, name in enumerate(("serve", "engine")):
        first, second = max(r[i] for r in after[:half]), max(r[i] for r in after[half:])
        growing = second > max(first * 1.05, first + 10)
        grew |= growing
        print(f"{name}: warm-up {warm[i]:.0f} MiB, peak {first:.0f} MiB in the first half, "
              f"{second:.0f} MiB in the second: {'GROWING' if growing else 'levelled off'}",
              file=sys.stderr)  # fmt: skip
    return int(grew)


if __name__ == "__main__":
    raise SystemExit(main())
