"""What the proxy costs: direct vs through Fathom, interleaved in one run, against the simulator.

    .venv/bin/python -m bench.overhead [--seconds 4] [--rounds 2] [--concurrency 1,64,256]

Non-streamed requests are answered instantly; streamed ones are 64 events 20 ms apart. The
proxy is pinned to one core and the simulator and this load generator to the other, so
"requests/s" is what one core of proxy sustains (or what the generator could send, whichever
is lower) and "CPU ms/req" is the proxy's own CPU time per request (1000 / it = the
requests/s one core can carry). Every figure is a difference or ratio measured in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import psutil
import uvloop

from fathom import spawn
from sidecar.sse import SSEParser, classify, percentile
from tests.support.processes import serve_command, simulate_command

STREAM_EVENTS = 64
STREAM_ITL_MS = 20
BODY = {"model": "sim", "messages": [{"role": "user", "content": "Say something."}]}
INSTANT = {"x-sim-ttft-ms": "0", "x-sim-itl-ms": "0", "x-sim-tokens": "16"}


@dataclass(slots=True)
class Sample:
    """Latencies of one phase (one target, one concurrency, one round)."""

    latency: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    requests: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0


async def one_plain(session: aiohttp.ClientSession, url: str, sample: Sample) -> None:
    """One instant non-streamed chat completion."""
    start = time.perf_counter()
    async with session.post(url, json=BODY, headers=INSTANT) as resp:
        await resp.read()
        resp.raise_for_status()
    sample.latency.append(time.perf_counter() - start)


async def one_stream(session: aiohttp.ClientSession, url: str, sample: Sample) -> None:
    """One streamed chat completion: TTFT and the gaps between content events."""
    start = time.perf_counter()
    parser = SSEParser()
    last: float | None = None
    headers = {"x-sim-ttft-ms": "0", "x-sim-itl-ms": str(STREAM_ITL_MS),
               "x-sim-tokens": str(STREAM_EVENTS)}  # fmt: skip
    async with session.post(url, json={**BODY, "stream": True}, headers=headers) as resp:
        resp.raise_for_status()
        async for chunk in resp.content.iter_any():
            now = time.perf_counter()
            for event in parser.feed(chunk, now):
                if not classify(event.data).content:
                    continue
                if last is None:
                    sample.ttft.append(now - start)
                else:
                    sample.itl.append(now - last)
                last = now
    sample.latency.append(time.perf_counter() - start)


async def closed_loop(
    call: Callable[[aiohttp.ClientSession, str, Sample], Awaitable[None]],
    url: str,
    concurrency: int,
    seconds: float,
    proxy: psutil.Process | None,
    stagger_s: float,
) -> Sample:
    """`concurrency` workers calling back to back for `seconds`, their starts spread out."""
    sample = Sample()
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=0)

    async def worker(session: aiohttp.ClientSession, k: int) -> None:
        # Independent users do not all start at one instant; a burst would measure queueing.
        await asyncio.sleep(k * stagger_s / concurrency)
        while time.perf_counter() < deadline:
            await call(session, url, sample)
            sample.requests += 1

    async with aiohttp.ClientSession(connector=connector) as session:
        cpu0 = _cpu(proxy)
        start = time.perf_counter()
        await asyncio.gather(*(worker(session, k) for k in range(concurrency)))
        sample.seconds = time.perf_counter() - start
        sample.cpu_s = _cpu(proxy) - cpu0
    return sample


def _cpu(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return float(times.user + times.system)


def merge(samples: list[Sample]) -> Sample:
    """One Sample from several rounds."""
    out = Sample()
    for s in samples:
        out.latency += s.latency
        out.ttft += s.ttft
        out.itl += s.itl
        out.requests += s.requests
        out.seconds += s.seconds
        out.cpu_s += s.cpu_s
    return out


def q(values: list[float], p: float) -> float:
    """Quantile in ms."""
    return percentile(sorted(values), p) * 1e3 if values else float("nan")


async def measure(
    direct: str, proxied: str, proxy: psutil.Process, args: argparse.Namespace
) -> list[str]:
    """Run every phase, interleaving direct and proxied rounds; return table rows."""
    rows = []
    for concurrency in args.concurrency:
        phases: dict[tuple[str, str], list[Sample]] = {}
        for round_no in range(args.rounds):
            order = [("direct", direct), ("proxy", proxied)]
            for target, base in order if round_no % 2 == 0 else order[::-1]:
                process = proxy if target == "proxy" else None
                url = base + "/v1/chat/completions"
                for kind, call, stagger in (
                    ("plain", one_plain, 0.0),
                    ("stream", one_stream, STREAM_EVENTS * STREAM_ITL_MS / 1e3),
                ):
                    sample = await closed_loop(
                        call, url, concurrency, args.seconds, process, stagger
                    )
                    phases.setdefault((target, kind), []).append(sample)
        rows.append(row(concurrency, {k: merge(v) for k, v in phases.items()}))
    return rows


def row(concurrency: int, m: dict[tuple[str, str], Sample]) -> str:
    """One table row for one concurrency."""
    dp, pp = m[("direct", "plain")], m[("proxy", "plain")]
    ds, ps = m[("direct", "stream")], m[("proxy", "stream")]
    cpu_ms = pp.cpu_s / pp.requests * 1e3
    cells = [
        f"{concurrency}",
        f"{q(pp.latency, 0.5) - q(dp.latency, 0.5):+.2f}",
        f"{q(pp.latency, 0.99) - q(dp.latency, 0.99):+.2f}",
        f"{q(ps.ttft, 0.5) - q(ds.ttft, 0.5):+.2f}",
        f"{q(ps.ttft, 0.99) - q(ds.ttft, 0.99):+.2f}",
        f"{statistics.fmean(ds.itl) * 1e3:.2f} → {statistics.fmean(ps.itl) * 1e3:.2f}",
        f"{dp.requests / dp.seconds:,.0f}",
        f"{pp.requests / pp.seconds:,.0f}",
        f"{cpu_ms:.3f}",
        f"{1e3 / cpu_ms:,.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| concurrency | added latency p50 ms | added latency p99 ms | added TTFT p50 ms "
    "| added TTFT p99 ms | ITL mean ms direct → proxy | req/s direct | req/s proxy "
    "| proxy CPU ms/req | req/s per proxy core |\n|" + "---|" * 10
)


def main() -> None:
    """Start simulator and proxy, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per phase")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 64, 256]
    )
    args = parser.parse_args()
    with spawn.running(simulate_command("--model", "sim"), ["server"]) as sim:
        direct = sim.addresses["server"]
        proxy_argv = serve_command(direct, "none", "--log-level", "WARNING")
        with spawn.running(proxy_argv, ["proxy", "admin"]) as proxy:
            if len(os.sched_getaffinity(0)) >= 2:
                os.sched_setaffinity(proxy.process.pid, {0})
                os.sched_setaffinity(sim.process.pid, {1})
                os.sched_setaffinity(0, {1})
            rows = uvloop.run(
                measure(direct, proxy.addresses["proxy"], psutil.Process(proxy.process.pid), args)
            )
    print(HEADER)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
