"""How late the simulator sends content events vs its schedule, at a given concurrency.

    python -m fathom.sim.lateness --streams 16 200 [--pin] [--itl-ms 20] [--tokens 50]

Starts `fathom simulate` as a child process, opens N traced streams at once (several rounds)
and reports, per concurrency, the lateness of every content event in ms:
- server: when the simulator wrote it minus when it was due (its own clock, `x-sim-trace`);
- client: when this process read it minus when it was due (the simulator's arrival time, sent
  as a header, + the schedule; one CLOCK_MONOTONIC for both processes): adds the way out and
  this client's own delays, which at hundreds of streams dominate (the client is Python too).
--pin puts the simulator on CPU 0 and this client on CPU 1, so they do not share a core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import uvloop

from fathom import spawn


@dataclass(frozen=True, slots=True)
class Lateness:
    """Lateness figures (ms) of one concurrency level."""

    streams: int
    events: int
    server: tuple[float, float, float, float]  # min, p50, p99, max
    client: tuple[float, float, float, float]
    sim_cpu: float  # the simulator's CPU use during the rounds, in cores


def quantiles(values: Sequence[float]) -> tuple[float, float, float, float]:
    """min, p50, p99 and max (nearest rank)."""
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return ordered[0], at(0.5), at(0.99), ordered[-1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def traced_stream(
    session: aiohttp.ClientSession, base: str, headers: dict[str, str], delay_s: float = 0.0
) -> tuple[list[float], list[float]]:
    """Server and client lateness (ms) of each content event of one stream."""
    await asyncio.sleep(delay_s)
    body = {"model": "sim", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    reads: list[tuple[float, bytes]] = []
    async with session.post(base + "/v1/chat/completions", json=body, headers=headers) as resp:
        arrival = float(resp.headers["x-sim-arrival-monotonic"])
        async for data in resp.content.iter_any():  # parsing waits: keep this loop cheap
            reads.append((time.monotonic(), data))
    server, client = [], []
    pending = b""
    for received, data in reads:
        *events, pending = (pending + data).split(b"\n\n")
        for event in events:
            if event.startswith(b"data: {"):
                chunk = json.loads(event[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    server.append(chunk["sim_t_ms"] - chunk["sim_due_ms"])
                    client.append((received - arrival) * 1e3 - chunk["sim_due_ms"])
    return server, client


async def measure(
    base: str, pid: int, streams: int, rounds: int, headers: dict[str, str], spread_s: float = 0.0
) -> Lateness:
    """Run `rounds` rounds of `streams` concurrent streams (starts spread evenly over
    `spread_s`; 0: all at once, the worst case) and collect their lateness."""
    server: list[float] = []
    client: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        cpu0, wall0 = cpu_seconds(pid), time.monotonic()
        for _ in range(rounds):
            results = await asyncio.gather(
                *(
                    traced_stream(session, base, headers, k * spread_s / streams)
                    for k in range(streams)
                )
            )
            for s, c in results:
                server.extend(s)
                client.extend(c)
        cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0)
    return Lateness(streams, len(server), quantiles(server), quantiles(client), cpu)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print one line per concurrency level."""
    args = _parser().parse_args(argv)
    headers = {
        "x-sim-trace": "1",
        "x-sim-ttft-ms": args.ttft_ms,
        "x-sim-itl-ms": args.itl_ms,
        "x-sim-tokens": args.tokens,
    }
    command = spawn.fathom_command("simulate", "--listen", "127.0.0.1:0", "--log-level", "WARNING")
    with spawn.running(command, ["server"]) as child:
        if args.pin:
            os.sched_setaffinity(child.process.pid, {0})
            os.sched_setaffinity(0, {1})
        print(
            f"ttft {args.ttft_ms} ms, itl {args.itl_ms} ms, {args.tokens} tokens, {args.rounds} "
            f"rounds, starts spread over {args.spread_ms} ms, pinned: {args.pin}; "
            "ms late: min/p50/p99/max"
        )
        for n in args.streams:
            base, pid = child.addresses["server"], child.process.pid
            spread_s = args.spread_ms / 1e3
            result = uvloop.run(measure(base, pid, n, args.rounds, headers, spread_s))
            print(_line(result), flush=True)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[16, 200])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ttft-ms", default="50")
    parser.add_argument("--itl-ms", default="20")
    parser.add_argument("--tokens", default="50")
    parser.add_argument("--pin", action="store_true", help="simulator on CPU 0, client on CPU 1")
    parser.add_argument(
        "--spread-ms", type=float, default=0.0, help="spread each round's starts (0: all at once)"
    )
    return parser


def _line(result: Lateness) -> str:
    def figures(values: tuple[float, ...]) -> str:
        return "/".join(f"{v:.2f}" for v in values)

    return (
        f"{result.streams:4d} streams {result.events:6d} events  server {figures(result.server)}"
        f"  client {figures(result.client)}  simulator cpu {result.sim_cpu:.2f} cores"
    )


if __name__ == "__main__":
    raise SystemExit(main())
