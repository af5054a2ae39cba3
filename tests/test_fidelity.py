"""Timing fidelity: what the proxy records vs when the simulator really sent each event.

The simulator stamps every chunk with its send time (`x-sim-trace: 1`, ms after the request
arrived there, and the arrival itself on CLOCK_MONOTONIC); the proxy runs as its own process
(`tests.support.timed_serve`: `fathom serve` that also reports each request's t0 on the same
clock). So the truth is absolute: TTFT = arrival - t0 + first content send, end-to-end =
arrival - t0 + last send, ITL from the send times. Compared over 200 streams at concurrency 16,
for each streamed API: chat, `/v1/responses` and `/v1/messages` (typed events).

The goal is 2 ms at p99 for every figure. The "awake" variant (slow: it needs a quiet machine)
keeps the proxy's event loop from sleeping and asserts the goal for every figure. The default
"idle" variant prints every figure and asserts 2 ms where it is robust to machine load (ITL
mean and p50): on this project's VMs a halted vCPU takes up to ~2-3 ms to wake, which lands
in the tails (see the README).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from fathom import spawn
from sidecar.sse import SSEParser, StreamTiming
from sidecar.wire import REQUEST_ID_HEADER
from tests.support.processes import serve_flags
from tests.support.store import opened

STREAMS, CONCURRENCY = 200, 16
HEADERS = {"x-sim-trace": "1", "x-sim-ttft-ms": "50", "x-sim-itl-ms": "20", "x-sim-tokens": "16"}
STREAM_S = 0.05 + 0.02 * 15


@dataclass(frozen=True, slots=True)
class Traced:
    """What the simulator says of one stream: arrival (s, monotonic) and send times (ms)."""

    request_id: str
    arrival: float
    content: list[float]
    last: float  # the last stamped event (chat: usage, just before [DONE])


# Per API: its path, a streamed request, and which of its events carry answer text.
MESSAGES = [{"role": "user", "content": "go"}]
APIS = {
    "chat": ("/v1/chat/completions", {"model": "sim", "messages": MESSAGES, "stream": True}),
    "responses": ("/v1/responses", {"model": "sim", "input": "go", "stream": True}),
    "messages": ("/v1/messages",
                 {"model": "sim", "messages": MESSAGES, "max_tokens": 64, "stream": True}),
}  # fmt: skip


def answers(chunk: dict[str, Any]) -> bool:
    """Whether a stream event of any of the APIS carries answer text."""
    choices = chunk.get("choices") or []
    if choices:
        return bool(choices[0]["delta"].get("content"))
    delta = chunk.get("delta")
    return chunk.get("type") == "response.output_text.delta" or (
        isinstance(delta, dict) and delta.get("type") == "text_delta"
    )


async def traced_stream(session: aiohttp.ClientSession, base: str, api: str) -> Traced:
    """One streamed request and the simulator's stamps."""
    path, body = APIS[api]
    async with session.post(base + path, json=body, headers=HEADERS) as resp:
        data = await resp.read()
        request_id = resp.headers[REQUEST_ID_HEADER]
        arrival = float(resp.headers["x-sim-arrival-monotonic"])
    content, stamps = [], []
    for event in SSEParser().feed(data, 0.0):
        if event.data and event.data != b"[DONE]":
            chunk = json.loads(event.data)
            stamps.append(chunk["sim_t_ms"])
            if answers(chunk):
                content.append(chunk["sim_t_ms"])
    return Traced(request_id, arrival, content, max(stamps))


def truth(traced: Traced, t0: float) -> dict[str, float]:
    """The figures the record should hold: the simulator's stamps, anchored at t0."""
    offset = (traced.arrival - t0) * 1e3  # t0 -> the simulator has the request
    timing = StreamTiming()
    for t in traced.content:
        timing.content_at(t / 1e3)
    itl = timing.itl_ms()
    assert itl is not None
    mean, p50, p99, worst = itl
    return {"ttft_ms": offset + traced.content[0], "itl_mean_ms": mean, "itl_p50_ms": p50,
            "itl_p99_ms": p99, "itl_max_ms": worst, "e2e_ms": offset + traced.last}  # fmt: skip


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def pin_apart(proxy_pid: int, simulator_pid: int) -> None:
    """The proxy's event loop on a core of its own, as a sidecar gets in production; the rest
    (the simulator, this client, the proxy's store engine process) on the other cores."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= 2:
        os.sched_setaffinity(proxy_pid, {cores[0]})
        rest = set(cores[1:])
        for child in psutil.Process(proxy_pid).children(recursive=True):
            os.sched_setaffinity(child.pid, rest)
        os.sched_setaffinity(simulator_pid, rest)
        os.sched_setaffinity(0, rest)


# "awake" keeps the proxy's event loop spinning (tests/support/timed_serve.py): on a quiet
# machine it shows the proxy's own error without a halted vCPU's wake-up; on a busy one the
# spinning proxy loses its core to others and shows nothing useful, hence slow (make
# test-slow).
@pytest.mark.parametrize("api", list(APIS))
@pytest.mark.parametrize("core", ["idle", pytest.param("awake", marks=pytest.mark.slow)])
async def test_recorded_timings_match_the_simulators_schedule(
    simulator_process: spawn.Child, tmp_path: Path, core: str, api: str
) -> None:
    simulator, simulator_pid = simulator_process.addresses["server"], simulator_process.process.pid
    affinity = os.sched_getaffinity(0)
    t0_file = tmp_path / "t0.json"
    argv = [
        sys.executable, "-m", "tests.support.timed_serve", str(t0_file),
        *serve_flags(simulator, tmp_path / "store"), *(["--awake"] if core == "awake" else []),
    ]  # fmt: skip
    proxy = spawn.start(argv, ["proxy", "admin"], {"FATHOM_SPOOL_DIR": str(tmp_path / "spool")})
    pin_apart(proxy.process.pid, simulator_pid)
    base = proxy.addresses["proxy"]
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            todo = iter(range(STREAMS))
            results: list[Traced] = []

            async def worker(k: int) -> None:
                # Staggered starts: clients do not all ask at the same instant, and a burst
                # would measure the proxy's queueing rather than its clock.
                await asyncio.sleep(k * STREAM_S / CONCURRENCY)
                for _ in todo:
                    results.append(await traced_stream(session, base, api))

            await asyncio.gather(*(worker(k) for k in range(CONCURRENCY)))
    finally:
        os.sched_setaffinity(0, affinity)
        assert proxy.stop(signal.SIGTERM) == 0
    names = ("ttft_ms", "itl_mean_ms", "itl_p50_ms", "itl_p99_ms", "itl_max_ms", "e2e_ms")
    with opened(tmp_path / "store") as store:
        rows = store.query_sync(f"SELECT request_id, {', '.join(names)} FROM fathom.requests")
    recorded = {r[0]: dict(zip(names, r[1:], strict=True)) for r in rows}
    t0 = json.loads(t0_file.read_text())
    assert len(results) == STREAMS and len(recorded) == STREAMS
    errors: dict[str, list[float]] = {name: [] for name in names}
    for traced in results:
        expected = truth(traced, t0[traced.request_id])
        for name in names:
            errors[name].append(abs(recorded[traced.request_id][name] - expected[name]))
    worst = {name: round(p99(values), 3) for name, values in errors.items()}
    print(
        f"\n{api}, {core} proxy core: p99 |recorded - truth| in ms over {STREAMS} streams: {worst}"
    )
    if core == "awake":  # the goal itself: every figure within 2 ms at p99
        assert all(value < 2.0 for value in worst.values()), worst
        return
    # With an idle core the tails also carry the VM's wake-up latency and every scheduling
    # hiccup of a shared machine, so their bound only catches gross errors (a buffered stream
    # is off by whole inter-token gaps); means and medians show a wrong clock at once.
    assert worst["itl_mean_ms"] < 2.0 and worst["itl_p50_ms"] < 2.0, worst
    tails = ("itl_p99_ms", "itl_max_ms", "ttft_ms", "e2e_ms")
    assert all(worst[name] < 25.0 for name in tails), worst
