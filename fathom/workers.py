"""`fathom serve --workers N`: N proxy processes on one port, one store engine, one admin port.

The parent runs no proxy. It owns the embedded store's engine process (which also listens on
a Unix socket in a private directory, so that every worker's writer inserts into the one
engine), holds the proxy port (bound with SO_REUSEPORT, never listening, so the kernel spreads
connections over the workers only and the port stays ours while they start), starts the
workers (fathom.service.running, each with its own bounded writer queue, its own dedup tokens
and its own spool directory: `spool_dir` for worker 0, `spool_dir/worker-I` for the others),
and serves the admin port for all of them (fathom.workers_admin). With a ClickHouse server
store each worker writes to it directly. What workers of an earlier, larger run left spooled
is handed to the ones that run now before they start (`adopt_spools`).

SIGTERM (or SIGINT) is passed to every worker, which drains as a single `fathom serve` does:
it stops accepting, lets its streams finish within grace_s, and flushes its rows; then the
admin server stops and the engine closes. A worker that dies is not restarted: serve stops the
others the same way and exits with status 1, naming the worker, so that the orchestrator
(Kubernetes' restart policy, systemd) sees the crash, counts it and restarts the whole
container with its back-off, rather than a loop in here hiding it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import math
import multiprocessing
import os
import signal
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import uvloop

from fathom.lifecycle import serving
from fathom.service import WorkerPlace, running
from fathom.settings import Settings
from fathom.workers_admin import Workers, admin_app
from sidecar.config import ConfigError
from sidecar.store.client import Place, Store, StoreError, open_store
from sidecar.store.schema import apply_schema, require
from sidecar.store.spool import Spool

log = logging.getLogger("fathom.workers")
READY_S = 120.0  # the longest a worker may take to start (its first store call included)
ENGINE_CHECK_S = 5.0  # how often the parent makes sure the engine process runs
KILL_AFTER_S = 10.0  # beyond grace_s, before a worker that does not stop is killed


class WorkerCrashed(RuntimeError):
    """A worker process exited on its own; the message says which and what to do."""


def count(setting: str) -> int:
    """The number of workers `setting` asks for ('auto': the CPUs this process may use)."""
    return available_cpus() if setting == "auto" else int(setting)


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may run on (its affinity), capped by a cgroup v2 CPU quota."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cgroup.read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, math.ceil(int(quota) / int(period))))


def run(settings: Settings, workers: int) -> None:
    """Serve with `workers` proxy processes until SIGTERM/SIGINT; WorkerCrashed when one dies.
    (The caller has run `adopt_spools` first.)"""
    uvloop.run(_supervise(settings, workers))


async def _supervise(settings: Settings, n: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with tempfile.TemporaryDirectory(prefix="fathom-workers-") as private:  # mode 0700
        async with contextlib.AsyncExitStack() as stack:
            store = await stack.enter_async_context(_engine(settings, private))
            reserved = stack.enter_context(_reserved(settings.proxy.listen_addr))
            places = [_place(i, private, store is not None) for i in range(n)]
            processes = [
                _start(_worker_settings(settings, i, reserved), p) for i, p in enumerate(places)
            ]
            stack.push_async_callback(_stop, processes, settings.grace_s)
            workers = Workers(
                [p.admin for p in places], lambda: all(p.is_alive() for p in processes)
            )
            stack.push_async_callback(workers.close)
            await _until_ready(workers, processes)
            runner = await stack.enter_async_context(
                serving(admin_app(workers), settings.admin_addr, access_log=None)
            )
            print(f"proxy listening on {_url(*reserved)}", flush=True)
            print(f"admin listening on {_url(*runner.addresses[0][:2])}", flush=True)
            log.info("%d workers (pids %s)", n, ", ".join(str(p.pid) for p in processes))
            crashed = await _until_stopped(stop, processes, store)
            await _stop(processes, settings.grace_s)
    if crashed is not None:
        index, process = crashed
        raise WorkerCrashed(
            f"worker {index} (pid {process.pid}) exited with code {process.exitcode}; the other "
            "workers drained and stopped. Its log is above; start fathom serve again (under "
            "Kubernetes the container restarts)"
        )


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.asynccontextmanager
async def _engine(settings: Settings, private: str) -> AsyncIterator[Store | None]:
    """The embedded store's engine process, listening for the workers, its schema brought up
    (or checked); None for a server store (each worker writes to it) or no store."""
    if not settings.store.startswith("chdb:"):
        yield None
        return
    store = open_store(settings.store, True, Place(listen=str(Path(private, "engine.sock"))))
    try:
        if settings.schema_check_only:
            await store.call(require)
        elif applied := await store.call(apply_schema):
            log.info("schema at %s: applied %s", store.url.safe, ", ".join(applied))
        yield store
    finally:
        store.close()


@contextlib.contextmanager
def _reserved(address: tuple[str, int]) -> Iterator[tuple[str, int]]:
    """The proxy's (host, port), port 0 resolved, held by a socket that never listens: the
    kernel hands connections to listening sockets only, so it holds the port for the workers."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {address[0]}:{address[1]}: {exc}") from exc
        yield address[0], int(sock.getsockname()[1])


def spool_of(settings: Settings, index: int) -> Path:
    """Where worker `index` spools: `spool_dir` itself for worker 0 (what a single process
    uses too), `spool_dir/worker-I` for the others."""
    root = Path(settings.writer.spool_dir)
    return root if index == 0 else root / f"worker-{index}"


def adopt_spools(settings: Settings, workers: int) -> None:
    """Hand the spools of worker numbers `workers` and above (left by a serve that ran more
    workers on this spool_dir) to the ones that run now, so that their rows still reach the
    store. Before any worker starts."""
    root = Path(settings.writer.spool_dir)
    for source in sorted(root.glob("worker-*")):
        index = source.name.removeprefix("worker-")
        if not index.isdigit() or int(index) < workers:
            continue
        target = Spool(spool_of(settings, int(index) % workers), settings.writer.spool_max_bytes)
        try:
            if rows := target.adopt(source):
                log.info("%d rows spooled by worker %s go to %s", rows, index, target.directory)
        finally:
            target.close()
        with contextlib.suppress(OSError):  # only once it is empty
            (source / ".lock").unlink()
            source.rmdir()


def _place(index: int, private: str, embedded: bool) -> WorkerPlace:
    engine = str(Path(private, "engine.sock")) if embedded else ""
    return WorkerPlace(index, str(Path(private, f"worker-{index}.sock")), engine)


def _worker_settings(settings: Settings, index: int, address: tuple[str, int]) -> Settings:
    """A worker's settings: the resolved port, its own spool, the schema left to the parent."""
    proxy = dataclasses.replace(settings.proxy, listen=f"{address[0]}:{address[1]}")
    writer = dataclasses.replace(settings.writer, spool_dir=str(spool_of(settings, index)))
    return dataclasses.replace(settings, proxy=proxy, writer=writer, schema_check_only=True)


def _start(settings: Settings, place: WorkerPlace) -> BaseProcess:
    level = logging.getLogger().getEffectiveLevel()
    process = multiprocessing.get_context("spawn").Process(
        target=_worker_main, args=(settings, place, level), name=f"fathom-worker-{place.index}"
    )
    process.start()
    return process


async def _until_ready(workers: Workers, processes: list[BaseProcess]) -> None:
    """Wait until every worker's /readyz says 200; WorkerCrashed if one exits first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_S
    while not all(status == 200 for status, _ in await workers.get("/readyz", 5.0)):
        if dead := [i for i, p in enumerate(processes) if not p.is_alive()]:
            raise WorkerCrashed(f"worker {dead[0]} exited while starting; its log is above")
        if loop.time() > deadline:
            raise WorkerCrashed(f"the workers were not ready within {READY_S:.0f} s")
        await asyncio.sleep(0.05)  # another process's readiness sends no event: poll it


async def _until_stopped(
    stop: asyncio.Event, processes: list[BaseProcess], store: Store | None
) -> tuple[int, BaseProcess] | None:
    """Wait for the signal, or for a worker to exit (returned); meanwhile keep the engine
    process running (a call starts a new one if it died, and the workers reconnect)."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[int] = loop.create_future()
    for index, process in enumerate(processes):
        loop.add_reader(process.sentinel, _note_exit, exited, index)
    stopping = asyncio.ensure_future(stop.wait())
    waiting: set[asyncio.Future[Any]] = {stopping, exited}
    try:
        while not stop.is_set() and not exited.done():
            await asyncio.wait(waiting, timeout=ENGINE_CHECK_S, return_when="FIRST_COMPLETED")
            if store is not None and not stop.is_set():
                with contextlib.suppress(StoreError):  # logged by the workers' writers
                    await store.query("SELECT 1")
    finally:
        stopping.cancel()
        for process in processes:
            loop.remove_reader(process.sentinel)
    if stop.is_set() or not exited.done():
        return None
    index = exited.result()
    log.error(
        "worker %d exited with code %s: stopping the others", index, processes[index].exitcode
    )
    return index, processes[index]


def _note_exit(exited: asyncio.Future[int], index: int) -> None:
    if not exited.done():
        exited.set_result(index)


async def _stop(processes: list[BaseProcess], grace_s: float) -> None:
    """SIGTERM every worker still running (each drains), wait, kill those past the grace."""
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    for process in processes:
        await loop.run_in_executor(None, process.join, grace_s + KILL_AFTER_S)
        if process.is_alive():
            log.warning("%s did not stop within %.0f s: killed", process.name, grace_s)
            process.kill()
            await loop.run_in_executor(None, process.join)


def _worker_main(settings: Settings, place: WorkerPlace, level: int) -> None:
    """Entry point of a worker process."""
    logging.basicConfig(
        level=level, format=f"%(asctime)s %(levelname)s %(name)s[w{place.index}]: %(message)s"
    )
    _die_with_parent()
    uvloop.run(_serve(settings, place))


async def _serve(settings: Settings, place: WorkerPlace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings, place):
        await stop.wait()
        log.info(
            "worker %d: draining in-flight requests for up to %.0f s", place.index, settings.grace_s
        )


def _die_with_parent() -> None:
    """SIGTERM this worker if the parent dies (kill -9): no orphan keeps the port."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
