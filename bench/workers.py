"""Stream events per second at saturation for `fathom serve --workers 1` and `--workers 2`,
and the CPU each event costs, so that the capacity of a core is known (issue #16).

    .venv/bin/python -m bench.workers [--workers 1,2] [--seconds 20] [--streams 256]
        [--tokens 100] [--itl-ms 1] [--simulators 2] [--load-procs 2]

Each configuration: `--simulators` simulator processes (no TTFT, `--tokens` content events
per stream `--itl-ms` apart: each event its own write, as from a model server, and together
far more than a proxy relays), spread by Fathom's routing (one route, equal weights);
`fathom serve --workers N` as deployed (embedded chDB store, default sampling) in front of
them; `--load-procs` processes of `--streams` streams in all, each stream followed at once by
the next. Events per second = streams completed in the window (after `--warmup`) x tokens /
window. CPU per event = CPU seconds of serve's process tree (parent, workers, store engine)
in the window / events. The simulators' and load generators' cores are printed too: the
figures are a saturated proxy's only while "serve cores busy" is near N and the others have
cores of their own (on 2 shared cores they compete with the workers, and the ratio
understates what a second core gives). The H200 line divides by one worker's events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import aiohttp
import psutil
import uvloop

from fathom import spawn
from tests.support.processes import serve_command, simulate_command, tree_cpu_s

BODY = {"model": "sim", "messages": [{"role": "user", "content": "Go."}], "stream": True}
H200_STREAMS, H200_TOKENS_PER_S = 300, 80  # what one H200 serves (issue #16)


@dataclass(frozen=True, slots=True)
class Result:
    """One configuration's figures."""

    workers: int
    events_per_s: float
    serve_cores: float  # CPU seconds of serve's tree per second of the window
    cpu_us_per_event: float
    others_cores: float  # simulators and load generators together


def load_process(
    url: str, streams: int, headers: dict[str, str], window: tuple[float, float], out: Connection
) -> None:
    """A load generator (child process): streams back to back; sends the number of streams
    that ended inside the window (wall-clock times, shared by every process)."""
    out.send(uvloop.run(_load(url, streams, headers, window)))


async def _load(
    url: str, streams: int, headers: dict[str, str], window: tuple[float, float]
) -> int:
    start, end = window
    done = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.time() < end:
            try:
                async with session.post(url, json=BODY, headers=headers) as resp:
                    async for _ in resp.content.iter_any():
                        pass
            except aiohttp.ClientError:
                continue
            done += start <= time.time() <= end

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(client(session) for _ in range(streams)))
    return done


def simulators(stack: ExitStack, n: int) -> list[str]:
    """`n` simulators on free ports; their base URLs."""
    argv = simulate_command("--model", "sim", "--seed", "1")
    return [
        stack.enter_context(spawn.running(argv, ["server"])).addresses["server"] for _ in range(n)
    ]


def fathom(stack: ExitStack, upstreams: list[str], workers: int, directory: Path) -> spawn.Child:
    """`fathom serve --workers N` as deployed, routing model 'sim' over the simulators."""
    routes = [{"model": "sim", "upstreams": [{"url": u, "deployment": "sim"} for u in upstreams]}]
    env = {"FATHOM_SPOOL_DIR": str(directory / "spool"), "FATHOM_ROUTES": json.dumps(routes)}
    argv = serve_command(upstreams[0], directory / "store", "--workers", str(workers))
    child = spawn.start([*argv, "--log-level", "WARNING"], ["proxy", "admin"], env)
    stack.callback(child.stop)
    return child


def measure(args: argparse.Namespace, workers: int) -> Result:
    """One configuration, started, loaded for the window and stopped."""
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="fathom-bench-") as tmp:
        upstreams = simulators(stack, args.simulators)
        child = fathom(stack, upstreams, workers, Path(tmp))
        url = child.addresses["proxy"] + "/v1/chat/completions"
        begin = time.time() + 1.0  # every load process is up by then
        window = (begin + args.warmup, begin + args.warmup + args.seconds)
        procs, pipes = start_load(args, url, window)
        sim_pids = [p.pid for p in psutil.Process().children() if p.pid != child.process.pid]
        time.sleep(max(0.0, window[0] - time.time()))  # a bench paces itself by the clock
        serve0, others0 = tree_cpu_s(child.process.pid), sum(map(tree_cpu_s, sim_pids))
        time.sleep(max(0.0, window[1] - time.time()))
        serve_s = tree_cpu_s(child.process.pid) - serve0
        others_s = sum(map(tree_cpu_s, sim_pids)) - others0
        streams = sum(pipe.recv() for pipe in pipes)
        for proc in procs:
            proc.join()
    events = streams * args.tokens
    return Result(
        workers, events / args.seconds, serve_s / args.seconds,
        serve_s / events * 1e6 if events else math.nan, others_s / args.seconds,
    )  # fmt: skip


def start_load(
    args: argparse.Namespace, url: str, window: tuple[float, float]
) -> tuple[list[BaseProcess], list[Connection]]:
    """The load generator processes, `--streams` spread over them."""
    context = multiprocessing.get_context("spawn")
    headers = {
        "x-sim-ttft-ms": "0",
        "x-sim-itl-ms": str(args.itl_ms),
        "x-sim-tokens": str(args.tokens),
    }
    procs: list[BaseProcess] = []
    pipes: list[Connection] = []
    for i in range(args.load_procs):
        ours, theirs = context.Pipe(duplex=False)
        share = args.streams // args.load_procs + (i < args.streams % args.load_procs)
        proc = context.Process(target=load_process, args=(url, share, headers, window, theirs))
        proc.start()
        procs.append(proc)
        pipes.append(ours)
    return procs, pipes


def report(results: list[Result]) -> Iterator[str]:
    """The table, the ratio and what one H200 needs."""
    yield "| workers | events/s | serve cores busy | CPU µs per event | simulators + load cores |"
    yield "|---|---|---|---|---|"
    for r in results:
        yield (
            f"| {r.workers} | {r.events_per_s:,.0f} | {r.serve_cores:.2f} "
            f"| {r.cpu_us_per_event:.1f} | {r.others_cores:.2f} |"
        )
    by = {r.workers: r for r in results}
    if 1 in by and 2 in by and by[1].events_per_s:
        yield f"\n2 workers / 1 worker: {by[2].events_per_s / by[1].events_per_s:.2f}x events/s"
    need = H200_STREAMS * H200_TOKENS_PER_S
    if 1 in by and by[1].events_per_s:
        per_core = 1e6 / by[1].cpu_us_per_event
        yield (
            f"an H200 at {H200_STREAMS} streams x {H200_TOKENS_PER_S} tok/s needs {need:,} "
            f"events/s: {math.ceil(need / by[1].events_per_s)} workers at one worker's "
            f"saturation here ({per_core:,.0f} events per CPU second)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to measure")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=3.0, help="load before the window")
    parser.add_argument("--streams", type=int, default=256, help="streams at once")
    parser.add_argument("--tokens", type=int, default=100, help="content events per stream")
    parser.add_argument("--itl-ms", type=float, default=1.0, help="gap between events")
    parser.add_argument("--simulators", type=int, default=2)
    parser.add_argument("--load-procs", type=int, default=2)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; {args.streams} streams of {args.tokens} events", file=sys.stderr)
    results = [measure(args, int(n)) for n in args.workers.split(",")]
    print("\n".join(report(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
