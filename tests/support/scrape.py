"""Reading a process's /metrics page: the figures the tests and the soak check."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.support.polling import until


def figures(page: str) -> dict[str, float]:
    """Sample name -> value (summed over label sets) of a Prometheus text page."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


@contextlib.asynccontextmanager
async def _session(given: aiohttp.ClientSession | None) -> AsyncIterator[aiohttp.ClientSession]:
    if given is not None:
        yield given
        return
    async with aiohttp.ClientSession() as session:
        yield session


async def page(admin: str, session: aiohttp.ClientSession | None = None) -> str:
    """The /metrics page of the admin server at `admin`."""
    async with _session(session) as client, client.get(admin + "/metrics") as resp:
        return await resp.text()


async def metric(admin: str, name: str, session: aiohttp.ClientSession | None = None) -> float:
    """One sample's value (summed over label sets; 0 when absent) on `admin`'s /metrics."""
    return figures(await page(admin, session)).get(name, 0.0)


async def counters_reach(admin: str, wanted: dict[str, float], within: float = 90.0) -> str:
    """Poll /metrics until each named sample reaches its value; the last page read."""
    last = {"page": ""}

    def values() -> dict[str, float]:
        seen = figures(last["page"]) if last["page"] else {}
        return {name: seen.get(name, 0.0) for name in wanted}

    async with aiohttp.ClientSession() as session:

        async def reached() -> bool:
            last["page"] = await page(admin, session)
            return all(values()[name] >= least for name, least in wanted.items())

        await until(reached, within, every=0.2, what=lambda: f"counters at {values()} of {wanted}")
    return last["page"]
