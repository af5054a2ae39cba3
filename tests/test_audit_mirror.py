"""The mirrored reference audit inside `fathom serve --probes`, against two real `fathom
simulate` processes (the fast deployment and the reference): sampled user prompts reach the
reference only as labelled audit traffic, identical upstreams give no divergence and a degraded
one does, and the audit budget holds at the reference under load while user traffic flows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from fathom.commands.simulate import run_simulator_process
from sidecar.routing import parse_routes
from sidecar.store.client import Store
from tests.support.polling import until
from tests.support.proxied import Proxied, proxied
from tests.support.servers import serving

pytestmark = pytest.mark.timeout(240)

# Answers at once; a repeatable canonical answer 60% of the time, a fresh draw else.
SOUND: dict[str, Any] = {"ttft_ms": 0, "itl_ms": 0, "tokens": 12, "consistency": 0.6}


def simulator() -> dict[str, Any]:
    return {"seed": 7, "models": {"sim": SOUND}}


@pytest.fixture(scope="module")
def fast() -> Iterator[str]:
    with run_simulator_process(simulator()) as url:
        yield url


@pytest.fixture(scope="module")
def reference() -> Iterator[str]:
    """The same model, served again: the same seed, the same knobs."""
    with run_simulator_process(simulator()) as url:
        yield url


@dataclass
class Counted:
    """What reached an upstream through the counting relay: (arrival, tokens) per request."""

    seen: list[tuple[float, int]] = field(default_factory=list)


@pytest.fixture
async def counted_reference(reference: str) -> AsyncIterator[tuple[str, Counted]]:
    """The reference behind a relay that counts requests and the tokens its usage reports:
    the budget is checked where the traffic lands, not by Fathom's own counters."""
    counted = Counted()
    async with aiohttp.ClientSession() as session:

        async def relay(request: web.Request) -> web.Response:
            arrived = time.monotonic()
            async with session.request(
                request.method, reference + request.path_qs, data=await request.read(),
                headers={"Content-Type": "application/json"},
            ) as resp:  # fmt: skip
                body = await resp.read()
                status = resp.status
            if request.method == "POST":
                usage = (await resp.json(content_type=None)).get("usage") or {}
                counted.seen.append((arrived, int(usage.get("total_tokens", 0))))
            return web.Response(body=body, status=status, content_type="application/json")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", relay)
        async with serving(app) as url:
            yield url, counted


def audited(fast: str, reference: str, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """`fathom serve --probes` settings: one route, sim -> 'fast', with reference 'bf16'."""
    route = {"model": "sim", "upstreams": [{"url": fast, "deployment": "fast"}],
             "reference": {"url": reference, "deployment": "bf16"}}  # fmt: skip
    return {
        "store": f"chdb://{tmp_path / 'db'}", "spool_dir": str(tmp_path / "spool"),
        "writer_flush_s": 0.05, "sample_rate": 1.0, "probes": True, "routes": parse_routes([route]),
        "scorer_device": "cpu", "probe_requests_per_min": 1.0, "canaries_per_round": 0,
        "audit_rate": 1.0, "audit_prompts": 4, "audit_canaries": 8, "audit_k": 2,
        "audit_interval_s": 0.1, "audit_permutations": 500, "audit_max_tokens": 16,
        "audit_comparisons": ("canary", "mmd"), "audit_requests_per_min": 6000.0,
        **overrides,
    }  # fmt: skip


async def ask(proxy: Proxied, prompts: list[str]) -> None:
    """User requests through the proxy, every one answered."""
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-user", max_retries=0)
    for prompt in prompts:
        reply = await client.chat.completions.create(
            model="sim", messages=[{"role": "user", "content": prompt}], max_tokens=16
        )
        assert reply.choices[0].message.content


async def verdicts(store: Store) -> list[tuple[Any, ...]]:
    return await store.query(
        "SELECT probe, item_id, passed FROM fathom.quality WHERE probe LIKE 'audit-%' "
        "AND model = 'sim' AND deployment = 'fast' ORDER BY ts, probe"
    )


async def test_identical_upstreams_agree_a_degraded_one_diverges(
    fast: str, reference: str, tmp_path: Path
) -> None:
    async with proxied(fast, **audited(fast, reference, tmp_path)) as proxy:
        store = proxy.service.store
        assert store is not None
        await ask(proxy, [f"What is {n} + {n + 3}?" for n in range(4)])

        async def audited_once() -> bool:
            return len(await verdicts(store)) >= 2

        await until(audited_once, within=90, what="a first audit's verdicts")
        first = await verdicts(store)
        assert first[:2] == [("audit-canary", "vs:bf16", 1), ("audit-mmd", "vs:bf16", 1)]
        # The reference got audit traffic only, labelled, never sampled; users got 'fast'.
        records = list(proxy.records.values())
        on_reference = {(r.origin, r.sampled) for r in records if r.deployment == "bf16"}
        assert on_reference == {("audit", False)}
        users = [r for r in records if r.origin == "user"]
        assert len(users) == 4 and {r.deployment for r in users} == {"fast"}
        audit_origins = {r.deployment for r in records if r.origin == "audit"}
        assert audit_origins == {"fast", "bf16"}

        # The fast deployment starts abstaining: the next audit says it diverges.
        async with aiohttp.ClientSession() as session:
            zoo = {"model": "sim", "member": "abstain"}
            assert (await session.post(fast + "/sim/zoo", json=zoo)).status == 200
        try:
            await ask(proxy, [f"What is {n} times 3?" for n in range(4)])

            async def diverged() -> bool:
                return any(passed == 0 for _, _, passed in await verdicts(store))

            await until(diverged, within=90, what="a divergence verdict")
            # Eight canaries cannot reach alpha = 0.01 unless nearly all are lost; four prompts
            # of k = 2 answers can.
            found = {probe for probe, _, passed in await verdicts(store) if passed == 0}
            assert "audit-mmd" in found
        finally:
            async with aiohttp.ClientSession() as session:
                await session.post(fast + "/sim/zoo", json={"model": "sim", "member": ""})
        samples = await store.query("SELECT DISTINCT origin, deployment FROM fathom.samples")
        assert samples == [("user", "fast")]


# The audit budget under test. A request reserves its prompt and its max_tokens (128 for a
# canary) and gets back what its usage says it did not use: both limits bind in turn.
RPM, TPM = 20.0, 1200.0


async def test_the_budget_holds_at_the_reference_under_load(
    fast: str, counted_reference: tuple[str, Counted], tmp_path: Path
) -> None:
    reference, counted = counted_reference
    overrides = {"audit_requests_per_min": RPM, "audit_tokens_per_min": TPM}
    async with proxied(fast, **audited(fast, reference, tmp_path, **overrides)) as proxy:
        prompts = [f"Tell me something about item {n}." for n in range(40)]
        started = time.monotonic()
        await asyncio.gather(*(ask(proxy, prompts[i::8]) for i in range(8)))
        users_took = time.monotonic() - started
        # Ten audits' worth of prompts wants ~400 audit requests: the budget allows a
        # minute's worth at once, then RPM a minute. Watch the reference for 5 s of that.
        await until(lambda: bool(counted.seen), within=60, what="audit traffic at the reference")
        first = counted.seen[0][0]
        await until(lambda: time.monotonic() - first > 5.0, within=30)
        seen = list(counted.seen)
        window = seen[-1][0] - first
        allowed = 1 + window / 60  # a full bucket, then its rate
        assert 5 <= len(seen) <= RPM * allowed + 1e-9, (len(seen), window)
        assert sum(tokens for _, tokens in seen) <= TPM * allowed, seen
        # The figures docs/audit.md quotes (pytest -s).
        print(f"\nreference: {len(seen)} requests, {sum(t for _, t in seen)} tokens in "
              f"{window:.1f} s; users took {users_took:.1f} s")  # fmt: skip
        # User traffic went on meanwhile: every request answered by 'fast', none waited on
        # the audit's budget.
        users = [r for r in proxy.records.values() if r.origin == "user"]
        assert len(users) == 40 and {(r.deployment, r.status) for r in users} == {("fast", 200)}
        assert users_took < 30
