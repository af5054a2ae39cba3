"""Soak: concurrent streams through `fathom serve` to the simulator, with faults along the way.

    .venv/bin/python -m bench.soak --seconds 600 --streams 200

Real processes on free 127.0.0.1 ports: `fathom simulate` (the upstream), `fathom serve` on an
embedded chDB store in a temporary directory, and a `fathom probe` worker re-asking sampled
answers through the proxy (its own chDB store, seeded with samples: an embedded store belongs to
one process). Each client streams chat completions back to back; a small share carry injected
upstream faults (HTTP 503, an error event, a reset). At fractions of the run: the store
disappears (every directory of it made immutable with `chattr +i`, root only) and returns; the
upstream is killed (-9) and started again on its port; the probe worker is killed (-9) while
its re-asks are in flight, and started again; at the end (`seconds`, or later if the restarted
worker has not yet resumed scoring) the proxy gets SIGTERM while streams are in flight.

Then everything is checked against the store. Requests are correlated by their credential: each
client request carries its own `Authorization: Bearer soak-N`, and the proxy stores the salted
hash of it (`client`), with the salt fixed here, so even a request that never got a response
header is found (or found missing). Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil
import uvloop

from fathom import spawn
from sidecar.proxy import _client_hash
from sidecar.sse import percentile
from sidecar.wire import REQUEST_ID_HEADER
from tests.support.outages import can_make_immutable, directories, set_immutable
from tests.support.polling import wait_for_line
from tests.support.processes import probe_command, serve, simulate_command
from tests.support.records import seed_samples
from tests.support.scrape import figures, page
from tests.support.store import embedded, opened

SALT = "fathom-soak"
PROBE_KEY = "soak-probe"
MODEL = "sim"
DEPLOYMENT = "soak"
DONE = b"data: [DONE]\n\n"
ERROR_EVENT = b'data: {"error"'  # the simulator's and the proxy's error events both start so
# Client-side outcomes. Explicit: the client was told (a status, an error event, a broken body,
# a refused connection). Never allowed: a hang (timeout) or a body that just ends (truncated).
EXPLICIT = ("http", "error_event", "cut", "refused", "no_response")
# The proxy's error classes that an upstream failure may leave on a record.
UPSTREAM_ERRORS = ("upstream_connect", "upstream_timeout", "upstream_http", "stream_error")
INSTANT = {"x-sim-ttft-ms": "0", "x-sim-itl-ms": "0"}  # seeding asks at full speed
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Soak:
    """What one soak does; fractions are of `seconds`, measured from the start of the load."""

    seconds: float = 600.0
    streams: int = 200
    ttft_ms: int = 50
    itl_ms: int = 20
    tokens: tuple[int, int] = (50, 200)  # per request, uniform
    fault_rate: float = 0.01  # requests with an injected upstream fault
    store_outage: tuple[float, float] = (0.20, 0.30)
    upstream_restart: float = 0.45
    worker_kill: float = 0.60
    warmup: float = 0.10  # RSS growth is measured from here to the end
    rss_every_s: float = 5.0
    max_rss_growth: float = 0.10
    samples: int = 0  # seeded for the worker; 0: enough to keep it busy the whole run
    backoff_s: float = 0.2  # a client's pause after a failed request, as real clients do
    margin_s: float = 3.0  # after the upstream is back, stale pooled connections may still fail
    read_timeout_s: float = 60.0  # no byte for this long is a hang
    seed: int = 0

    def at(self, fraction: float) -> float:
        """Seconds into the load at which `fraction` of it has passed."""
        return self.seconds * fraction


# ---------------------------------------------------------------------------- processes


class Fleet:
    """The simulator, the proxy and the probe worker, as child processes, and their paths."""

    def __init__(self, soak: Soak, workdir: Path) -> None:
        self.soak, self.workdir = soak, workdir
        self.store, self.spool = workdir / "store", workdir / "spool"
        self.worker_store = workdir / "worker-store"
        self.sim_port = 0
        self.sim: spawn.Child | None = None
        self.proxy: spawn.Child | None = None
        self.worker: spawn.Child | None = None

    @property
    def proxy_url(self) -> str:
        """Base URL of the proxy."""
        assert self.proxy is not None
        return self.proxy.addresses["proxy"]

    def start_sim(self) -> spawn.Child:
        """`fathom simulate` on the simulator's port (a free one the first time)."""
        s = self.soak
        argv = simulate_command(
            "--model", MODEL, "--ttft-ms", str(s.ttft_ms), "--itl-ms", str(s.itl_ms),
            "--tokens", "100", "--seed", str(s.seed), port=self.sim_port,
        )  # fmt: skip
        self.sim = spawn.start(argv, ["server"])
        self.sim_port = int(self.sim.addresses["server"].rsplit(":", 1)[1])
        return self.sim

    def start_proxy(self) -> None:
        """`fathom serve` in front of the simulator, on the embedded store."""
        assert self.sim is not None
        self.proxy = serve(
            self.sim.addresses["server"], self.store, self.spool, "--deployment", DEPLOYMENT,
            FATHOM_CLIENT_SALT=SALT,
        )  # fmt: skip

    def start_worker(self) -> None:
        """`fathom probe` on its own store, re-asking through the proxy (scorer loads later)."""
        argv = probe_command(self.worker_store, self.proxy_url)
        env = {
            # Rounds of 2 samples re-asked 3 times at once (~2 s each): a round line is logged
            # every few seconds, so a kill can be aimed at re-asks in flight.
            "FATHOM_PROBE_K": "3", "FATHOM_PROBE_CONCURRENCY": "2", "FATHOM_PROBE_BATCH": "2",
            "FATHOM_PROBE_IDLE_S": "0.5",
            "FATHOM_CANARIES_PER_ROUND": "0", "FATHOM_SCORER_DEVICE": "cpu",
            "FATHOM_WORKER_COUNT": "1", "FATHOM_WORKER_INDEX": "0",
            "FATHOM_PROBE_API_KEY": PROBE_KEY, "FATHOM_PROBE_REQUESTS_PER_MIN": "100000",
            "FATHOM_PROBE_TOKENS_PER_MIN": "1e9", "FATHOM_DETECT_INTERVAL_S": "3600",
            "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
        }  # fmt: skip
        self.worker = spawn.start(argv, [], env, timeout=0.0)  # announces no address

    def children(self) -> Iterator[spawn.Child]:
        """The children now running (or started), proxy first."""
        yield from (c for c in (self.proxy, self.worker, self.sim) if c is not None)

    def stop(self) -> None:
        """Stop whatever still runs; leave the store writable again."""
        for child in self.children():
            child.stop(signal.SIGKILL)  # a no-op for those that have exited
        if self.store.exists() and os.geteuid() == 0 and shutil.which("chattr"):
            set_immutable(directories(self.store), False)


ROUND = r"probe worker \d+/\d+ round \d+: [1-9]"


def kill_mid_reask(fleet: Fleet) -> None:
    """kill -9 the worker just after it began a round (its re-asks in flight), restart it."""
    assert fleet.worker is not None
    done = [line for line in list(fleet.worker.output) if re.search(ROUND, line)]
    with contextlib.suppress(spawn.SpawnError):  # an idle worker is killed all the same
        wait_for_line(fleet.worker, ROUND, timeout=120.0, unlike=done)
        time.sleep(0.5)  # the next round's query is done: its re-asks are out
    fleet.worker.stop(signal.SIGKILL)
    fleet.start_worker()


async def seed(store_path: Path, sim: str, count: int) -> None:
    """`count` samples for the worker: real answers of the simulator, rows by the sampler."""
    store = await asyncio.to_thread(embedded, store_path, isolated=True)
    try:
        await seed_samples(
            store, sim, MODEL, count, prefix="soak-", deployment=DEPLOYMENT, max_tokens=None,
            headers=INSTANT,
        )  # fmt: skip
    finally:
        store.close()


async def bring_up(fleet: Fleet) -> None:
    """Simulator, seeded worker store, proxy and worker; returns once the worker can score."""
    s = fleet.soak
    sim = await asyncio.to_thread(fleet.start_sim)
    # The worker scores under a sample a second (2 at a time, re-asks of ~2 s): keep it busy.
    count = s.samples or max(20, int(s.seconds * 1.5))
    await asyncio.gather(
        seed(fleet.worker_store, sim.addresses["server"], count),
        asyncio.to_thread(fleet.start_proxy),
    )
    await asyncio.to_thread(fleet.start_worker)
    assert fleet.worker is not None
    await asyncio.to_thread(wait_for_line, fleet.worker, r"scorer ready", 180.0)


# ---------------------------------------------------------------------------- the clients


@dataclass(slots=True)
class Outcome:
    """What the client saw of one request (times on the soak's monotonic clock)."""

    n: int
    tokens: int
    fault: str  # the injected upstream fault ('' for none)
    start: float
    end: float = 0.0
    status: int = 0
    request_id: str = ""  # from the proxy's response header
    kind: str = ""  # ok | http | error_event | cut | refused | no_response | timeout | truncated
    detail: str = ""

    @property
    def key(self) -> str:
        """The credential this request carried; the store keeps its salted hash."""
        return f"Bearer soak-{self.n}"


@dataclass(slots=True)
class Load:
    """The clients' shared state: the request counter, their randomness, what they saw."""

    soak: Soak
    clock: Clock
    rng: random.Random
    outcomes: list[Outcome] = field(default_factory=list)
    sent: int = 0
    in_flight: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def next(self) -> Outcome:
        """The next request: its number, length and injected fault, if any."""
        low, high = self.soak.tokens
        tokens = self.rng.randint(low, high)
        fault = ""
        if self.rng.random() < self.soak.fault_rate:
            at = self.rng.randrange(tokens)
            fault = self.rng.choice(("http-503", f"error-event:{at}", f"reset:{at}"))
        self.sent += 1
        return Outcome(self.sent, tokens, fault, self.clock())


BODY = json.dumps(
    {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "Go on."}]}
).encode()


async def one_request(session: aiohttp.ClientSession, base: str, load: Load) -> Outcome:
    """One streamed chat completion; how it ended, as the client saw it."""
    out = load.next()
    s = load.soak
    headers = {"Authorization": out.key, "Content-Type": "application/json",
               "x-sim-tokens": str(out.tokens), "x-sim-ttft-ms": str(s.ttft_ms),
               "x-sim-itl-ms": str(s.itl_ms)}  # fmt: skip
    if out.fault:
        headers["x-sim-fault"] = out.fault
    load.in_flight += 1
    try:
        async with session.post(base + "/v1/chat/completions", data=BODY, headers=headers) as r:
            out.status, out.request_id = r.status, r.headers.get(REQUEST_ID_HEADER, "")
            out.kind, out.detail = await (_read_stream(r) if r.status == 200 else _read_error(r))
    except aiohttp.ClientConnectorError as exc:
        out.kind, out.detail = "refused", type(exc).__name__
    except TimeoutError:
        out.kind, out.detail = "timeout", f"no byte for {s.read_timeout_s:g} s"
    except (aiohttp.ClientError, OSError) as exc:  # the connection broke
        out.kind, out.detail = ("cut" if out.status else "no_response"), type(exc).__name__
    finally:
        load.in_flight -= 1
        out.end = load.clock()
    return out


async def _read_stream(resp: aiohttp.ClientResponse) -> tuple[str, str]:
    """Read an SSE body cheaply: only its tail and error events are looked at."""
    tail, errored = b"", False
    async for chunk in resp.content.iter_any():
        window = tail + chunk
        errored = errored or ERROR_EVENT in window
        tail = window[-64:]
    if errored:
        return "error_event", ""
    return ("ok", "") if tail.endswith(DONE) else ("truncated", tail[-40:].decode("replace"))


async def _read_error(resp: aiohttp.ClientResponse) -> tuple[str, str]:
    """An error response: its status and the error type its JSON body names."""
    body = await resp.read()
    try:
        kind = str(json.loads(body)["error"]["type"])
    except (ValueError, KeyError, TypeError):
        kind = "unparsed"
    return "http", f"{resp.status} {kind}"


async def client(session: aiohttp.ClientSession, base: str, load: Load, delay: float) -> None:
    """Stream back to back until told to stop; pause a little after a failure."""
    await asyncio.sleep(delay)  # users do not all arrive at one instant
    while not load.stop.is_set():
        outcome = await one_request(session, base, load)
        load.outcomes.append(outcome)
        if outcome.kind != "ok":
            await asyncio.sleep(load.soak.backoff_s)


def client_session(soak: Soak) -> aiohttp.ClientSession:
    """One session for all clients: a connection each, no total timeout, a read timeout."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=soak.read_timeout_s)
    connector = aiohttp.TCPConnector(limit=0)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False)


# ---------------------------------------------------------------------------- the run


@dataclass(slots=True)
class Run:
    """What happened besides the clients' outcomes (times on the soak's monotonic clock)."""

    t0: float
    wall_offset: float  # time.time() - clock(): record timestamps to the soak's clock
    windows: dict[str, tuple[float, float]] = field(default_factory=dict)
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds into load, bytes)
    engine_rss: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # share of one core during the load
    writer: dict[str, float] = field(default_factory=dict)  # fathom_writer_* at the end
    in_flight_at_sigterm: int = 0
    exits: dict[str, int] = field(default_factory=dict)
    store_outage: bool = True


async def _until(clock: Clock, deadline: float) -> None:
    await asyncio.sleep(max(0.0, deadline - clock()))


async def inject_faults(fleet: Fleet, load: Load, run: Run) -> None:
    """The faults, each at its own fraction of the run; each leaves its window in `run`."""
    s = load.soak
    async with asyncio.TaskGroup() as faults:
        faults.create_task(_fault(load, run, s.upstream_restart, "upstream_restart",
                                  lambda: restart_upstream(fleet)))  # fmt: skip
        faults.create_task(
            _fault(load, run, s.worker_kill, "worker_kill", lambda: kill_mid_reask(fleet))
        )
        if run.store_outage:
            faults.create_task(_store_outage(fleet, load, run))


async def _fault(load: Load, run: Run, at: float, name: str, action: Callable[[], None]) -> None:
    await _until(load.clock, run.t0 + load.soak.at(at))
    start = load.clock()
    await asyncio.to_thread(action)
    run.windows[name] = (start, load.clock())


async def _store_outage(fleet: Fleet, load: Load, run: Run) -> None:
    s, clock = load.soak, load.clock
    await _until(clock, run.t0 + s.at(s.store_outage[0]))
    start = clock()
    paths = directories(fleet.store)
    await asyncio.to_thread(set_immutable, paths, True)
    try:
        await _until(clock, run.t0 + s.at(s.store_outage[1]))
    finally:
        await asyncio.to_thread(set_immutable, paths, False)
    run.windows["store_outage"] = (start, clock())


def exit_code(child: spawn.Child, timeout: float) -> int:
    """Wait for a signalled child to exit; kill it if it outlives `timeout`."""
    try:
        return child.process.wait(timeout)
    except subprocess.TimeoutExpired:
        return child.stop(signal.SIGKILL)


def restart_upstream(fleet: Fleet) -> None:
    """kill -9 the simulator and start it again on the same port."""
    assert fleet.sim is not None
    fleet.sim.stop(signal.SIGKILL)
    fleet.start_sim()


async def watch_rss(pid: int, load: Load, run: Run) -> None:
    """Sample the proxy's resident memory every few seconds until the load stops."""
    process = psutil.Process(pid)
    while not load.stop.is_set():
        run.rss.append((load.clock() - run.t0, process.memory_info().rss))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(load.stop.wait(), load.soak.rss_every_s)


def cpu_seconds(process: psutil.Process) -> float:
    """CPU time a process has used so far."""
    times = process.cpu_times()
    return float(times.user + times.system)


def cpu_shares(
    fleet: Fleet, start: dict[str, tuple[psutil.Process, float]], since: float
) -> dict[str, float]:
    """Cores each process kept busy: the proxy and the clients (this process) since the load
    began (`start`: their CPU seconds then), the simulator since it last started."""
    elapsed = time.monotonic() - since
    shares = {name: (cpu_seconds(p) - cpu0) / elapsed for name, (p, cpu0) in start.items()}
    assert fleet.sim is not None
    sim = psutil.Process(fleet.sim.process.pid)
    shares["simulator"] = cpu_seconds(sim) / (time.time() - sim.create_time())
    return shares


async def writer_figures(session: aiohttp.ClientSession, admin: str) -> dict[str, float]:
    """The writer's counters from the proxy's /metrics (rows written, spooled, dropped)."""
    seen = figures(await page(admin, session))
    return {name: value for name, value in seen.items() if name.startswith("fathom_writer_")}


async def drive(fleet: Fleet, load: Load, run: Run) -> None:
    """Clients, faults and memory samples for the run; then SIGTERM with streams in flight."""
    s = load.soak
    assert fleet.proxy is not None and fleet.worker is not None
    stream_s = (s.ttft_ms + s.itl_ms * sum(s.tokens) / 2) / 1e3
    async with client_session(s) as session:
        clients = [
            asyncio.create_task(client(session, fleet.proxy_url, load, k * stream_s / s.streams))
            for k in range(s.streams)
        ]
        rss = asyncio.create_task(watch_rss(fleet.proxy.process.pid, load, run))
        watched = {"proxy": psutil.Process(fleet.proxy.process.pid), "clients": psutil.Process()}
        cpu = {name: (p, cpu_seconds(p)) for name, p in watched.items()}
        try:
            await inject_faults(fleet, load, run)
            await _until(load.clock, run.t0 + s.seconds)
            # ...and past the restarted worker's first round, however long its scorer took.
            with contextlib.suppress(spawn.SpawnError):  # then the checks say it did not resume
                await asyncio.to_thread(wait_for_line, fleet.worker, ROUND, 180.0)
            run.writer = await writer_figures(session, fleet.proxy.addresses["admin"])
            run.engine_rss = sum(c.memory_info().rss for c in watched["proxy"].children())
            run.cpu = cpu_shares(fleet, cpu, run.t0)
            load.stop.set()
            await rss
            await stop_mid_stream(fleet, load, run, clients)
        finally:
            load.stop.set()
            for task in [*clients, rss]:
                task.cancel()
            await asyncio.gather(*clients, rss, return_exceptions=True)


async def stop_mid_stream(
    fleet: Fleet, load: Load, run: Run, clients: Sequence[asyncio.Task[None]]
) -> None:
    """SIGTERM the proxy with the streams in flight (no new ones start); wait for the clients."""
    run.in_flight_at_sigterm = load.in_flight
    sigterm = load.clock()
    # The worker too, or it would re-ask through a proxy that refuses connections.
    for child in (fleet.worker, fleet.proxy):
        assert child is not None
        child.process.send_signal(signal.SIGTERM)
    await asyncio.wait(clients, timeout=load.soak.read_timeout_s + 30)
    run.windows["shutdown"] = (sigterm, load.clock())


async def soak(s: Soak, workdir: Path) -> tuple[Load, Run]:
    """Bring everything up, run the load with its faults, stop everything; what was seen."""
    fleet = Fleet(s, workdir)
    clock = time.monotonic
    load = Load(s, clock, random.Random(s.seed))
    try:
        await bring_up(fleet)
        run = Run(clock(), time.time() - clock(), store_outage=can_make_immutable(workdir))
        await drive(fleet, load, run)
        # Proxy and worker have had their SIGTERM (a second one, once their loops have
        # closed, would kill them): wait for them. The upstream goes once they are done.
        for name in ("proxy", "worker"):
            run.exits[name] = await asyncio.to_thread(exit_code, getattr(fleet, name), 120.0)
        assert fleet.sim is not None
        run.exits["sim"] = await asyncio.to_thread(fleet.sim.stop, signal.SIGTERM, 30.0)
    finally:
        await asyncio.to_thread(fleet.stop)
    return load, run


# ---------------------------------------------------------------------------- the checks


@dataclass(frozen=True, slots=True)
class Stored:
    """One `fathom.requests` row, as the checks read it."""

    request_id: str
    client: str
    origin: str
    status: int
    error: str
    output_tokens: int
    at: float  # request start on the soak's clock


def read_requests(store_path: Path, run: Run) -> list[Stored]:
    """Every row of the proxy's `fathom.requests`, once the proxy has exited."""
    with opened(store_path, isolated=True) as store:
        rows = store.query_sync(
            "SELECT request_id, client, origin, status, error, output_tokens, "
            "toUnixTimestamp64Milli(ts) FROM fathom.requests"
        )
    return [
        Stored(str(r[0]), str(r[1]), str(r[2]), int(r[3]), str(r[4]), int(r[5]),
               r[6] / 1e3 - run.wall_offset)
        for r in rows
    ]  # fmt: skip


def read_quality(store_path: Path) -> tuple[int, int, int]:
    """In the worker's store: samples scored, (sample, probe) pairs scored more than once,
    and samples scored without consistency (their re-asks all failed)."""
    with opened(store_path, isolated=True) as store:
        ((scored, twice, alone),) = store.query_sync(
            "SELECT uniqExact(request_id), countIf(n > 1), uniqExact(request_id) - "
            "uniqExactIf(request_id, probe = 'consistency') FROM (SELECT request_id, probe, "
            "count() AS n FROM fathom.quality WHERE request_id != '' GROUP BY request_id, probe)"
        )
    return int(scored), int(twice), int(alone)


def overlaps(out: Outcome, window: tuple[float, float] | None, margin: float = 0.0) -> bool:
    """Whether a request was in flight at some point of a window (stretched by `margin`)."""
    return window is not None and out.start <= window[1] + margin and out.end >= window[0]


INJECTED = {"http-503": "http", "error-event": "error_event", "reset": "cut"}


def classify(out: Outcome, run: Run, soak: Soak) -> tuple[str, bool]:
    """(class, allowed) of one client outcome; allowed: completed, or an explicit error the
    upstream caused (injected, or during its restart)."""
    if out.fault:
        expected = INJECTED[out.fault.split(":")[0]]
        allowed = out.kind == expected or (
            out.kind in EXPLICIT and overlaps(out, run.windows.get("upstream_restart"))
        )
        return f"injected {out.fault.split(':')[0]} -> {out.kind}", allowed
    if out.kind == "ok":
        return "completed", True
    label = f"{out.kind} {out.detail}".strip()
    restart = run.windows.get("upstream_restart")
    if overlaps(out, restart, soak.margin_s):
        when = "upstream restart" if overlaps(out, restart) else "upstream just back"
        return f"{when}: {label}", out.kind in ("http", "cut")
    return f"other: {label}", False


@dataclass(slots=True)
class Verdict:
    """Figures for the table, and every check that failed."""

    rows: list[tuple[str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, name: str, value: object, ok: bool = True, need: str = "") -> None:
        """One row of the table; a failed check is also listed on its own."""
        text = f"{value}" + ("" if ok else f"  FAILED{' (need ' + need + ')' if need else ''}")
        self.rows.append((name, text))
        if not ok:
            self.failures.append(f"{name}: {value}" + (f" (need {need})" if need else ""))

    def table(self) -> str:
        """The rows as a Markdown table."""
        lines = ["| figure | value |", "|---|---|"]
        return "\n".join(lines + [f"| {name} | {value} |" for name, value in self.rows])


def check_clients(load: Load, run: Run, verdict: Verdict) -> None:
    """Every stream completed or ended with an explicit error the upstream (or the stop) caused."""
    classes = Counter(classify(out, run, load.soak) for out in load.outcomes)
    ok = {name: n for (name, allowed), n in classes.items() if allowed}
    bad = {name: n for (name, allowed), n in classes.items() if not allowed}
    verdict.add("requests sent", len(load.outcomes))
    verdict.add("completed", ok.pop("completed", 0))
    for name in sorted(ok):
        verdict.add(f"explicit error: {name}", ok[name])
    verdict.add("other errors", sum(bad.values()), not bad, "0")
    for name in sorted(bad):
        verdict.add(f"  other: {name}", bad[name], False, "0")
    shutdown = [o for o in load.outcomes if overlaps(o, run.windows.get("shutdown"))]
    done = sum(o.kind == "ok" or bool(o.fault) for o in shutdown)
    verdict.add(
        "streams in flight at SIGTERM: completed", f"{done} of {run.in_flight_at_sigterm}",
        done == run.in_flight_at_sigterm and done > 0, "all, and some",
    )  # fmt: skip


def check_records(load: Load, rows: Sequence[Stored], verdict: Verdict) -> None:
    """Each request that reached the proxy is stored once, under the id it was answered with."""
    by_client: dict[str, list[Stored]] = {}
    for row in rows:
        if row.origin == "user":
            by_client.setdefault(row.client, []).append(row)
    expected = missing = twice = wrong = unsure = 0
    for out in load.outcomes:
        found = by_client.pop(_client_hash(SALT.encode(), out.key), [])
        if out.kind in ("refused", "no_response"):  # never reached a handler (or may have)
            wrong += len(found) > (out.kind == "no_response")
            unsure += len(found)
            continue
        expected += 1
        missing += not found
        twice += len(found) > 1
        wrong += bool(found) and not _agrees(out, found[0])
    users = sum(row.origin == "user" for row in rows)
    verdict.add("records stored (user)", f"{users} for {expected} requests (+{unsure} of the "
                "requests that got no response)", users == expected + unsure, "equal")  # fmt: skip
    verdict.add("records missing", missing, missing == 0, "0")
    verdict.add("records duplicated", twice, twice == 0, "0")
    ids = Counter(row.request_id for row in rows)
    twice_ids = sum(n > 1 for n in ids.values())
    verdict.add("request ids stored twice", twice_ids, twice_ids == 0, "0")
    phantom = sum(map(len, by_client.values()))
    verdict.add("records no client sent", phantom, phantom == 0, "0")
    verdict.add("records disagreeing with the client", wrong, wrong == 0, "0")


def _agrees(out: Outcome, row: Stored) -> bool:
    """The record says what the client saw: the id, success (with its tokens) or an error."""
    if out.request_id and row.request_id != out.request_id:
        return False
    if out.kind == "ok":
        return row.error == "" and row.status == 200 and row.output_tokens == out.tokens
    return row.error != ""


def check_probes(rows: Sequence[Stored], run: Run, soak: Soak, verdict: Verdict) -> None:
    """Probe traffic: cut only by the worker's kill or by the upstream; resumed after the kill."""
    probes = [row for row in rows if row.origin == "probe"]
    restarted_at = run.windows.get("worker_kill", (0.0, float("inf")))[1]
    restart = run.windows.get("upstream_restart", (0.0, 0.0))
    classes: Counter[str] = Counter()
    bad = 0
    for row in probes:
        classes[row.error or "ok"] += 1
        if row.error == "client_cancelled":
            bad += row.at > restarted_at
        elif row.error:
            during = restart[0] - soak.read_timeout_s <= row.at <= restart[1] + soak.margin_s
            bad += row.error not in UPSTREAM_ERRORS or not during
    listed = ", ".join(f"{name} {n}" for name, n in sorted(classes.items()))
    verdict.add("probe requests (by outcome)", listed or "none", bool(probes), "some")
    cut = classes["client_cancelled"]
    verdict.add("probe requests cut by the worker's kill -9", cut, cut > 0, "> 0")
    verdict.add("probe requests failed other than by kill -9 or restart", bad, bad == 0, "0")
    resumed = sum(row.at > restarted_at and not row.error for row in probes)
    verdict.add("probe requests answered after the worker's restart", resumed, resumed > 0, "> 0")


def check_worker(scored: int, twice: int, alone: int, verdict: Verdict) -> None:
    """The worker's store: samples scored, none twice despite kill -9."""
    verdict.add("samples scored by the probe worker", scored, scored > 0, "> 0")
    verdict.add("samples scored twice", twice, twice == 0, "0")
    # The worker's choice, not a loss of rows: a sample whose re-asks all failed keeps its
    # degeneration score and is not re-asked again.
    verdict.add("samples scored without consistency (re-asks failed)", alone)


def check_memory(run: Run, soak: Soak, verdict: Verdict) -> None:
    """Proxy RSS after warm-up against the end of the run."""
    warm = next((rss for t, rss in run.rss if t >= soak.at(soak.warmup)), None)
    if warm is None or not run.rss:
        verdict.add("proxy RSS", "not sampled", False)
        return
    end, peak = run.rss[-1][1], max(rss for _, rss in run.rss)
    growth = end / warm - 1
    verdict.add(
        f"proxy RSS after warm-up ({soak.warmup:.0%}) -> end (peak)",
        f"{warm / 2**20:.1f} -> {end / 2**20:.1f} MiB ({peak / 2**20:.1f}), {growth:+.1%}",
        growth < soak.max_rss_growth, f"< {soak.max_rss_growth:.0%}",
    )  # fmt: skip
    series = [next((rss for t, rss in run.rss if t >= soak.at(f)), end)
              for f in (0.1, 0.25, 0.5, 0.75)] + [end]  # fmt: skip
    verdict.add("proxy RSS at 10/25/50/75/100% of the run",
                " / ".join(f"{rss / 2**20:.1f}" for rss in series) + " MiB")  # fmt: skip
    verdict.add("store engine process RSS at the end", f"{run.engine_rss / 2**20:.1f} MiB")


def check_store(run: Run, spool: Path, verdict: Verdict) -> None:
    """The outage really spooled rows, nothing was dropped, nothing left in the spool."""
    spooled = int(run.writer.get("fathom_writer_rows_spooled_total", 0))
    dropped = int(run.writer.get("fathom_writer_rows_dropped_total", 0))
    if run.store_outage:
        verdict.add("rows spooled during the store outage", spooled, spooled > 0, "> 0")
    else:
        verdict.add("store outage", "skipped: needs root and chattr")
    verdict.add("rows dropped by the writer", dropped, dropped == 0, "0")
    left = sum(p.stat().st_size for p in spool.glob("*") if p.is_file()) if spool.exists() else 0
    verdict.add("spool bytes left after stop", left, left == 0, "0")


def check_cpu(run: Run, verdict: Verdict) -> None:
    """Where the CPU went (the machine's other work is not shown)."""
    listed = ", ".join(f"{name} {share:.0%}" for name, share in run.cpu.items())
    verdict.add("CPU during the load, share of one core", listed)


def check_exits(run: Run, verdict: Verdict) -> None:
    """Clean exits after SIGTERM."""
    listed = ", ".join(f"{name} {code}" for name, code in run.exits.items())
    verdict.add("exit codes after SIGTERM", listed, all(c == 0 for c in run.exits.values()), "0")


def latency(load: Load, run: Run, verdict: Verdict) -> None:
    """How much later than scheduled completed streams ended (the proxy, the simulator and
    this client together: an upper bound on what the proxy adds): all of them, those in
    flight during the store outage, and those clear of every fault."""
    s = load.soak
    done = [o for o in load.outcomes if o.kind == "ok"]
    outage = run.windows.get("store_outage")
    parts = {
        "all": done,
        "during the store outage": [o for o in done if overlaps(o, outage)],
        "clear of every fault": [
            o for o in done if not any(overlaps(o, w, s.margin_s) for w in run.windows.values())
        ],
    }
    for name, outcomes in parts.items():
        late = sorted((o.end - o.start) * 1e3 - (s.ttft_ms + (o.tokens - 1) * s.itl_ms)
                      for o in outcomes)  # fmt: skip
        if late:
            p50, p99 = percentile(late, 0.5), percentile(late, 0.99)
            verdict.add(f"end of stream after schedule p50 / p99, {name}",
                        f"{p50:.1f} / {p99:.1f} ms ({len(late)} streams)")  # fmt: skip


# ---------------------------------------------------------------------------- entry points


def verdict_of(load: Load, run: Run, workdir: Path) -> Verdict:
    """Every check, in the order the table shows them."""
    verdict = Verdict()
    s = load.soak
    verdict.add("load", f"{s.seconds:g} s, {s.streams} streams, {s.tokens[0]}-{s.tokens[1]} "
                f"tokens at {s.itl_ms} ms ITL, TTFT {s.ttft_ms} ms, {s.fault_rate:.0%} injected "
                "faults")  # fmt: skip
    check_clients(load, run, verdict)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two stores: open both at once
        requests = pool.submit(read_requests, workdir / "store", run)
        quality = pool.submit(read_quality, workdir / "worker-store")
        rows = requests.result()
        check_records(load, rows, verdict)
        check_probes(rows, run, s, verdict)
        check_worker(*quality.result(), verdict)
    check_store(run, workdir / "spool", verdict)
    check_memory(run, s, verdict)
    check_exits(run, verdict)
    check_cpu(run, verdict)
    latency(load, run, verdict)
    return verdict


def run_soak(s: Soak, workdir: Path | None = None) -> Verdict:
    """The whole soak in a temporary directory (or `workdir`); its verdict."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fathom-soak-")))
        load, run = uvloop.run(soak(s, workdir))
        return verdict_of(load, run, workdir)


def parse_args(argv: Sequence[str] | None) -> Soak:
    """Command-line flags -> Soak."""
    d = Soak()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=d.seconds)
    parser.add_argument("--streams", type=int, default=d.streams)
    parser.add_argument("--ttft-ms", type=int, default=d.ttft_ms)
    parser.add_argument("--itl-ms", type=int, default=d.itl_ms)
    parser.add_argument("--tokens", type=lambda v: tuple(map(int, v.split("-"))),
                        default=d.tokens, help="range per request, e.g. 50-200")  # fmt: skip
    parser.add_argument("--fault-rate", type=float, default=d.fault_rate)
    parser.add_argument("--rss-every-s", type=float, default=d.rss_every_s)
    parser.add_argument("--max-rss-growth", type=float, default=d.max_rss_growth)
    parser.add_argument("--seed", type=int, default=d.seed)
    args = parser.parse_args(argv)
    return Soak(**{k.replace("-", "_"): v for k, v in vars(args).items()})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak, print the table; 1 if any check failed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    verdict = run_soak(parse_args(argv))
    print(verdict.table())
    for failure in verdict.failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if verdict.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
