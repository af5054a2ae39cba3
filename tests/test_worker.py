"""The probe worker on real parts: chDB, a `fathom simulate` process with quality knobs, the
in-process proxy, the real openai client and the real all-MiniLM-L6-v2 model."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from probes.probe_settings import ProbeSettings
from probes.samples import Sample, reaskable
from probes.scorer import Scorer
from probes.traffic import client_session
from probes.worker import Worker, WorkerStats
from sidecar.record import Record
from sidecar.sampler import SAMPLE_COLUMNS
from sidecar.store.client import Store
from sidecar.store.schema import apply_schema
from tests.support.canaries import multiplications
from tests.support.polling import until
from tests.support.processes import simulated_models
from tests.support.proxied import proxied
from tests.support.records import sample_values, seed_samples
from tests.support.store import opened


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with simulated_models(tmp_path_factory.mktemp("sim")) as url:
        yield url


def settings(**overrides: Any) -> ProbeSettings:
    """Generous budgets, short pauses, no canaries unless asked."""
    base = ProbeSettings(
        k=3, requests_per_min=100_000, tokens_per_min=1e9, idle_s=0.05, timeout_s=30,
        canaries_per_round=0,
    )  # fmt: skip
    return replace(base, **overrides).resolved(hostname="")


async def quality(store: Store, where: str = "1") -> list[tuple[Any, ...]]:
    """(request_id, model, probe, count, mean score) per request and probe."""
    return await store.query(
        "SELECT request_id, model, probe, count(), avg(score), avg(passed) FROM fathom.quality "
        f"WHERE {where} GROUP BY request_id, model, probe ORDER BY request_id, probe"
    )


# ---------------------------------------------------------------------------- end to end


async def test_through_the_proxy_each_sample_scored_once_and_probe_traffic_labelled(
    sim: str, scorer: Scorer, tmp_path: Path
) -> None:
    overrides = {
        "store": f"chdb://{tmp_path / 'db'}", "sample_rate": 1.0, "writer_flush_s": 0.05,
        "spool_dir": str(tmp_path / "spool"),
    }  # fmt: skip
    async with proxied(sim, **overrides) as proxy:
        store = proxy.service.store
        assert store is not None
        client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-user")
        for i in range(6):
            messages: list[ChatCompletionMessageParam] = [
                {"role": "user", "content": f"What do you think of idea {i}?"}
            ]
            if i % 2:
                stream = await client.chat.completions.create(
                    model="steady", messages=messages, stream=True
                )
                _ = [chunk async for chunk in stream]
            else:
                await client.chat.completions.create(model="steady", messages=messages)

        async def stored(sql: str, expected: int) -> bool:
            return bool((await store.query(sql))[0][0] == expected)

        await until(lambda: stored("SELECT count() FROM fathom.samples", 6))
        await until(lambda: stored("SELECT count() FROM fathom.requests", 6))
        canaries = multiplications()[:3]
        async with client_session(settings()) as session:
            worker = Worker(store, session, proxy.url, scorer, canaries,
                            settings(canaries_per_round=3))  # fmt: skip
            stop = asyncio.Event()
            await worker.step(stop)
            await worker.step(stop)  # nothing left: nothing scored twice, no canaries yet
        rows = await quality(store, "request_id != ''")
        assert {(r[2], r[3]) for r in rows} == {
            ("abstention", 1),
            ("consistency", 1),
            ("degeneration", 1),
        }
        assert len(rows) == 18 and len({r[0] for r in rows}) == 6
        consistency = [r[4] for r in rows if r[2] == "consistency"]
        assert min(consistency) > 0.99  # 'steady' repeats itself
        canary_rows = await quality(store, "request_id = ''")
        assert [(r[1], r[2], r[3], r[5]) for r in canary_rows] == [("steady", "factuality", 3, 1.0)]
        assert worker.stats.samples_scored == 6 and worker.stats.consistency_scored == 6
        assert worker.stats.canaries_sent == 3 and worker.stats.errors == 0

        def origins() -> dict[str, int]:
            counts: dict[str, int] = {}
            for record in proxy.records.values():
                counts[record.origin] = counts.get(record.origin, 0) + 1
            return counts

        async def all_recorded() -> bool:
            return origins() == {"user": 6, "probe": 18, "canary": 3}

        await until(all_recorded)
        assert not any(r.sampled for r in proxy.records.values() if r.origin != "user")
        probes = [r for r in proxy.records.values() if r.origin == "probe"]
        assert all(r.deployment == "default" and r.status == 200 for r in probes)
        await until(lambda: stored("SELECT count() FROM fathom.requests", 27))
        by_origin = await store.query(
            "SELECT origin, count(), sum(sampled) FROM fathom.requests GROUP BY origin "
            "ORDER BY origin"
        )
        assert by_origin == [("canary", 3, 0), ("probe", 18, 0), ("user", 6, 6)]
        samples = await store.query("SELECT DISTINCT origin FROM fathom.samples")
        assert samples == [("user",)]


# ---------------------------------------------------------------------------- quality


async def test_consistent_model_scores_higher_than_inconsistent_one(
    sim: str, scorer: Scorer, store: Store
) -> None:
    await seed_samples(store, sim, "steady", 8)
    await seed_samples(store, sim, "flaky", 8)
    async with client_session(settings()) as session:
        worker = Worker(store, session, sim, scorer, [], settings(k=5))
        assert not await worker.samples.score_batch(asyncio.Event())
    means = dict(
        await store.query(
            "SELECT model, avg(score) FROM fathom.quality WHERE probe = 'consistency' "
            "GROUP BY model"
        )
    )
    print(f"\nconsistency (k=5, 8 samples each): steady {means['steady']:.3f}, "
          f"flaky {means['flaky']:.3f}")  # fmt: skip
    assert means["steady"] > 0.99
    assert means["flaky"] < means["steady"] - 0.2
    assert worker.stats.consistency_scored == 16 and worker.stats.probe_requests == 80


async def test_routed_deployments_get_canaries_before_any_user_request(
    sim: str, scorer: Scorer, store: Store
) -> None:
    probe = settings(canaries_per_round=3, routed=(("steady", "d1"),))
    async with client_session(probe) as session:
        worker = Worker(store, session, sim, scorer, multiplications(), probe)
        await worker.step(asyncio.Event())
    assert await store.query("SELECT count() FROM fathom.requests") == [(0,)]  # no user yet
    rows = await quality(store, "request_id = ''")
    assert [(r[1], r[2], r[3]) for r in rows] == [("steady", "factuality", 3)]
    assert worker.stats.canaries_sent == 3


async def test_accurate_model_passes_more_canaries(sim: str, scorer: Scorer, store: Store) -> None:
    canaries = multiplications()
    probe = settings(canaries_per_round=len(canaries))
    async with client_session(probe) as session:
        worker = Worker(store, session, sim, scorer, canaries, probe)
        assert await worker.canaries.round("steady", "d1")
        assert await worker.canaries.round("wrong", "d1")
    rows = await store.query(
        "SELECT model, count(), countIf(passed IS NOT NULL), avg(passed), "
        "uniqExact(item_id), any(request_id) FROM fathom.quality WHERE probe = 'factuality' "
        "GROUP BY model ORDER BY model"
    )
    rates = {model: rate for model, _, _, rate, _, _ in rows}
    print(f"\ncanary pass rate ({len(canaries)} canaries): accurate {rates['steady']:.1%}, "
          f"inaccurate {rates['wrong']:.1%}")  # fmt: skip
    assert [(m, n, ids, rid) for m, n, _, _, ids, rid in rows] == [
        ("steady", len(canaries), len(canaries), ""), ("wrong", len(canaries), len(canaries), "")
    ]  # fmt: skip
    assert rates["steady"] > 0.85 and rates["wrong"] < 0.5
    assert worker.stats.canaries_sent == 2 * len(canaries) and worker.stats.canaries_failed == 0


# ---------------------------------------------------------------------------- budget


class FakeClock:
    """Wall-clock seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def test_budget_caps_the_reasks(sim: str, scorer: Scorer, store: Store) -> None:
    clock = FakeClock()
    probe = settings(k=5, requests_per_min=10)
    async with proxied(sim) as proxy, client_session(probe) as session:
        worker = Worker(store, session, proxy.url, scorer, [], probe, clock=clock)
        await seed_samples(store, sim, "steady", 6)
        await worker.samples.score_batch(asyncio.Event())
        assert (worker.stats.consistency_scored, worker.stats.skipped_budget) == (2, 4)
        clock.now += 60  # a minute later the budget has refilled, once
        await seed_samples(store, sim, "steady", 3, prefix="later-")
        await worker.samples.score_batch(asyncio.Event())
        assert (worker.stats.consistency_scored, worker.stats.skipped_budget) == (4, 5)
        probes = [r for r in proxy.records.values() if r.origin == "probe"]
        assert len(probes) == 20 == worker.stats.probe_requests
    rows = await quality(store)
    assert sum(r[2] == "degeneration" for r in rows) == 9
    assert sum(r[2] == "consistency" for r in rows) == 4


async def test_token_budget_is_checked_before_sending(
    sim: str, scorer: Scorer, store: Store
) -> None:
    probe = settings(k=5, tokens_per_min=100)  # one re-ask of these samples needs ~60
    async with client_session(probe) as session:
        worker = Worker(store, session, sim, scorer, [], probe, clock=FakeClock())
        await seed_samples(store, sim, "steady", 2)
        await worker.samples.score_batch(asyncio.Event())
    assert worker.stats.skipped_budget == 2 and worker.stats.probe_requests == 0
    assert worker.stats.samples_scored == 2


# ---------------------------------------------------------------------------- workers


async def test_three_workers_score_every_sample_exactly_once(
    sim: str, scorer: Scorer, store: Store
) -> None:
    ids = await seed_samples(store, sim, "steady", 30)
    stop = asyncio.Event()
    stats = [WorkerStats() for _ in range(3)]

    async def one(index: int) -> None:
        probe = settings(k=2, batch=4, worker_index=index, worker_count=3)
        async with client_session(probe) as session:
            await Worker(store, session, sim, scorer, [], probe, stats=stats[index]).run(stop)

    async def all_scored() -> bool:
        sql = "SELECT count() FROM fathom.quality WHERE probe = 'degeneration'"
        return bool((await store.query(sql))[0][0] >= len(ids))

    tasks = [asyncio.create_task(one(i)) for i in range(3)]
    try:
        await until(all_scored, within=30)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    rows = await quality(store)
    counts = {(r[0], r[2]): r[3] for r in rows}
    assert counts == {(i, p): 1 for i in ids for p in ("abstention", "consistency", "degeneration")}
    assert sum(s.samples_scored for s in stats) == 30
    assert all(s.samples_scored > 0 and s.errors == 0 for s in stats)
    shares = await store.query(
        "SELECT cityHash64(request_id) % 3 AS w, count() FROM fathom.samples GROUP BY w ORDER BY w"
    )
    assert [n for _, n in shares] == [s.samples_scored for s in stats]


async def test_stop_finishes_the_samples_in_hand(sim: str, scorer: Scorer, store: Store) -> None:
    await seed_samples(store, sim, "slow", 6)
    oldest = await store.query("SELECT request_id FROM fathom.samples ORDER BY ts, request_id")
    probe = settings(k=2, concurrency=2)
    stop = asyncio.Event()
    async with client_session(probe) as session:
        worker = Worker(store, session, sim, scorer, [], probe)
        running = asyncio.create_task(worker.run(stop))

        async def reasking() -> bool:
            return worker.stats.reasking == 2

        await until(reasking)
        stop.set()  # as SIGTERM does
        await running
    rows = await quality(store)
    assert [(r[0], r[2]) for r in rows] == [
        (i, p) for (i,) in oldest[:2] for p in ("abstention", "consistency", "degeneration")
    ]
    assert worker.stats.samples_scored == 2 and worker.stats.reasking == 0


# ---------------------------------------------------------------------------- failures


async def test_overloaded_upstream_backs_off_and_unreachable_store_is_survived(
    sim: str, scorer: Scorer, tmp_path: Path
) -> None:
    with opened(tmp_path / "db") as store:  # no schema: every query fails
        async with client_session(settings()) as session:
            worker = Worker(store, session, sim, scorer, [], settings())
            # Detection fails first; the round stops there and pauses (backoff: 1 s, 2 s, ...).
            assert await worker.step(asyncio.Event()) == 1.0 and worker.stats.errors == 1
            assert await worker.step(asyncio.Event()) == 2.0 and worker.stats.errors == 2
            apply_schema(store)
            await seed_samples(store, sim, "steady", 2)
            # Every re-ask fails to connect: degeneration only, and the worker rests.
            down = Worker(store, session, "http://127.0.0.1:9", scorer, [], settings(batch=1))
            assert await down.step(asyncio.Event()) == 1.0
            assert down.stats.skipped["reask_failed"] == 1 and down.stats.backoffs == 1
            assert (await worker.step(asyncio.Event())) == worker.settings.idle_s
            assert worker.stats.consistency_scored == 1 and worker.stats.errors == 2


def test_unreaskable_samples_say_why() -> None:
    def sample(request_json: str, answer: str = "An answer.") -> Sample:
        return Sample(datetime.now(UTC), "r", "m", "d", "chat", "stop", request_json, answer)

    ok = '{"model": "m", "messages": []}'
    assert reaskable(sample(ok)) == ({"model": "m", "messages": []}, "")
    assert reaskable(sample("not json"))[1] == "not_json"
    assert reaskable(sample('{"messages": []}'))[1] == "not_json"
    assert reaskable(sample('{"model": "m", "x": "key [REDACTED:secret]"}'))[1] == "redacted"
    assert reaskable(sample('{"model": "m", "x": "a [fathom: truncated 9 chars]"}'))[1] == (
        "truncated"
    )


async def test_non_answers_score_zero_unasked_and_redacted_prompts_are_not_reasked(
    sim: str, scorer: Scorer, store: Store
) -> None:
    def row(request_id: str, content: str, answer: str) -> list[Any]:
        body = {"model": "steady", "messages": [{"role": "user", "content": content}]}
        record = Record(ts=datetime.now(UTC), request_id=request_id, route="chat",
                        model="steady", deployment="d1", finish_reason="stop")  # fmt: skip
        return sample_values(record, json.dumps(body).encode(), answer)

    secret = "sk-" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
    rows = [
        row("blank", "What is the capital of Peru?", "I don't know."),
        row("secret", f"Is {secret} a valid key format?", "It looks like an API key."),
    ]
    await store.insert("fathom.samples", SAMPLE_COLUMNS, rows)
    async with client_session(settings()) as session:
        worker = Worker(store, session, sim, scorer, [], settings())
        await worker.step(asyncio.Event())
    got = {(r[0], r[2]): (r[4], r[5]) for r in await quality(store)}
    assert got[("blank", "consistency")] == (0.0, None)
    assert got[("blank", "abstention")] == (0.0, 0.0)
    assert got[("secret", "abstention")] == (1.0, 1.0)
    assert ("secret", "consistency") not in got
    assert worker.stats.probe_requests == 0  # neither was re-asked
    assert worker.stats.skipped["redacted"] == 1


class BrokenModel:
    """A model that fails like a GPU out of memory (which cannot be had here)."""

    def get_sentence_embedding_dimension(self) -> int:
        return 4

    def encode(self, *_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("CUDA out of memory (simulated)")


async def test_scorer_failure_leaves_samples_for_a_later_round(
    sim: str, scorer: Scorer, store: Store
) -> None:
    broken = Scorer(BrokenModel(), name="broken", device="cpu", dtype="float32", batch_size=8)
    await seed_samples(store, sim, "steady", 3)
    try:
        async with client_session(settings()) as session:
            failing = Worker(store, session, sim, broken, [], settings())
            assert await failing.step(asyncio.Event()) == 1.0  # backing off
            assert failing.stats.errors == 1 and failing.stats.samples_scored == 0
            assert await quality(store) == []  # nothing half-scored
            worker = Worker(store, session, sim, scorer, [], settings())
            await worker.step(asyncio.Event())
    finally:
        broken.close()
    assert worker.stats.consistency_scored == 3 and len(await quality(store)) == 9
