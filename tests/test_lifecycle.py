"""One lifecycle: the parts of `fathom serve` stop in reverse order of their start, the probe
worker first (its re-asks still need the proxy), the store and the metrics last; a background
part gets its grace, then is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from fathom import probing, service
from fathom.lifecycle import background
from fathom.settings import build
from sidecar.drain import Drain
from sidecar.metrics import Metrics
from sidecar.store.client import Store
from sidecar.store.writer import Writer


async def test_a_background_part_gets_its_grace_then_is_cancelled() -> None:
    stop = asyncio.Event()
    finished: list[str] = []

    async def polite() -> None:
        await stop.wait()
        finished.append("polite")

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()  # never ends by itself
        except asyncio.CancelledError:
            finished.append("cancelled")
            raise

    async with background(polite(), stop, None, "polite") as task:
        assert not task.done()
    assert finished == ["polite"] and stop.is_set()
    async with background(stubborn(), asyncio.Event(), 0.01, "stubborn") as task:
        pass
    assert finished == ["polite", "cancelled"] and task.cancelled()


@contextlib.contextmanager
def spied(monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> Iterator[None]:
    """Record when each part stops (the real methods still run)."""

    def spy(owner: type, name: str, label: Callable[..., str]) -> None:
        real = getattr(owner, name)
        if asyncio.iscoroutinefunction(real):

            async def wrapper_async(self: Any, *args: Any, **kwargs: Any) -> Any:
                calls.append(label(self))
                return await real(self, *args, **kwargs)

            monkeypatch.setattr(owner, name, functools.wraps(real)(wrapper_async))
        else:

            def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
                calls.append(label(self))
                return real(self, *args, **kwargs)

            monkeypatch.setattr(owner, name, functools.wraps(real)(wrapper))

    spy(Drain, "close", lambda _: "drain")
    spy(web.AppRunner, "cleanup", lambda runner: f"runner:{runner.addresses[0][1]}")
    spy(aiohttp.ClientSession, "close", lambda _: "session")
    spy(Writer, "stop", lambda _: "writer")
    spy(Store, "close", lambda _: "store")
    spy(Metrics, "shutdown", lambda _: "metrics")
    yield


async def test_serve_stops_its_parts_in_reverse_order(
    simulator: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    async def worker(_store: Any, _settings: Any, _target: str, stop: asyncio.Event,
                     **_kwargs: Any) -> None:  # fmt: skip
        await stop.wait()
        await asyncio.sleep(0.05)  # the sample in hand
        calls.append("worker done")

    monkeypatch.setattr(probing, "run_in_process", worker)
    settings = build(
        upstream=simulator, listen="127.0.0.1:0", admin="127.0.0.1:0", probes=True,
        store=f"chdb://{tmp_path / 'store'}", spool_dir=str(tmp_path / "spool"),
    )  # fmt: skip
    with spied(monkeypatch, calls):
        async with service.running(settings) as started:
            assert started.ready
            ports = {
                name: int(address.rsplit(":", 1)[1]) for name, address in started.addresses.items()
            }
        assert not started.ready
    named = [
        {f"runner:{port}": f"{name} runner" for name, port in ports.items()}.get(c, c)
        for c in calls
    ]
    assert named == [
        "drain", "worker done", "proxy runner", "admin runner", "session", "writer", "store",
        "metrics",
    ]  # fmt: skip
