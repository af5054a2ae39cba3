"""`/v1/responses` with the real `openai` client against `fathom simulate`, directly and
through the proxy: the same bytes, and the stored figures the simulator was told to produce.

Expectations come from the x-sim-* headers (the schedule, the reasoning, the tool calls), not
from the code under test."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from probes.consistency import reask
from probes.probe_settings import ProbeSettings
from probes.scorer import Scorer
from probes.traffic import ProbeTraffic, client_session
from probes.worker import Worker
from probes.worker_stats import WorkerStats
from sidecar.wire import prompt_text
from tests.support import processes
from tests.support.polling import until
from tests.support.proxied import proxied
from tests.support.schedule import near
from tests.support.store import opened

TTFT_MS, ITL_MS = 60, 15
REASONING, TOKENS, TOOLS, BROKEN = 3, 4, 2, 1
SCHEDULE = {
    "x-sim-ttft-ms": str(TTFT_MS), "x-sim-itl-ms": str(ITL_MS), "x-sim-tokens": str(TOKENS),
    "x-sim-reasoning-tokens": str(REASONING), "x-sim-tool-calls": str(TOOLS),
    "x-sim-tool-calls-broken": str(BROKEN), "x-sim-seed": "7",
}  # fmt: skip
PROMPT = "What is the weather in Paris today?"  # 7 words: the simulator's input tokens
INSTRUCTIONS = "Answer briefly."  # 2 more
CREATED = re.compile(rb'"created_at": ?\d+')



async def test_the_openai_client_reads_the_simulators_responses(simulator: str) -> None:
    client = openai.AsyncOpenAI(base_url=simulator + "/v1", api_key="sk-direct")
    headers = {**SCHEDULE, "x-sim-ttft-ms": "0", "x-sim-itl-ms": "0"}
    whole = await client.responses.create(
        model="sim", input=PROMPT, instructions=INSTRUCTIONS, extra_headers=headers
    )
    stream = await client.responses.create(
        model="sim", input=PROMPT, instructions=INSTRUCTIONS, stream=True, extra_headers=headers
    )
    kinds: list[str] = []
    texts: list[str] = []
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            texts.append(event.delta)
        if event.type == "response.completed":
            completed = event.response
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.reasoning_text.delta") == REASONING
    assert len(texts) == TOKENS and "".join(texts) == whole.output_text != ""
    calls = [item for item in whole.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["lookup"] * TOOLS
    assert [_valid(c.arguments) for c in calls] == [True] * (TOOLS - BROKEN) + [False] * BROKEN
    for usage in (whole.usage, completed.usage):
        assert usage is not None
        assert (usage.input_tokens, usage.output_tokens) == (9, REASONING + TOKENS + 3 * TOOLS)
        assert usage.output_tokens_details.reasoning_tokens == REASONING


def _valid(arguments: str) -> bool:
    try:
        return isinstance(json.loads(arguments), dict)
    except ValueError:
        return False


async def raw(
    client: openai.AsyncOpenAI, stream: bool, headers: dict[str, str] = SCHEDULE
) -> bytes:
    """The bytes of one answer as the client received them, `created_at` normalised."""
    async with client.responses.with_streaming_response.create(
        model="sim", input=PROMPT, instructions=INSTRUCTIONS, stream=stream,
        extra_headers=headers,
    ) as resp:  # fmt: skip
        data = b"".join([chunk async for chunk in resp.iter_bytes()])
    return CREATED.sub(b'"created_at":0', data)


async def test_bytes_through_the_proxy_equal_direct(simulator: str) -> None:
    direct = openai.AsyncOpenAI(base_url=simulator + "/v1", api_key="sk-direct")
    async with proxied(simulator) as proxy:
        through = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-proxied")
        for stream in (True, False):
            assert await raw(through, stream) == await raw(direct, stream)
        records = sorted(proxy.records.values(), key=lambda r: r.stream)
    assert [(r.route, r.stream, r.error, r.status) for r in records] == [
        ("responses", False, "", 200), ("responses", True, "", 200)
    ]  # fmt: skip


COLUMNS = (
    "route, stream, ttft_ms, ttfr_ms, ttfa_ms, ttft_tool_ms, input_tokens, output_tokens, "
    "tokens_source, reasoning_tokens, reasoning_source, tool_calls, tool_calls_invalid, "
    "finish_reason, chunks, sampled"
)


async def test_stored_rows_match_what_the_simulator_was_told(
    simulator: str, tmp_path: Path
) -> None:
    proxy = processes.serve(simulator, tmp_path / "store", tmp_path / "spool",
                            FATHOM_WRITER_FLUSH_S="0.2", FATHOM_SAMPLE_RATE="1")  # fmt: skip
    try:
        client = openai.AsyncOpenAI(base_url=proxy.addresses["proxy"] + "/v1", api_key="sk-t")
        stream = await client.responses.create(
            model="sim", input=PROMPT, instructions=INSTRUCTIONS, stream=True,
            extra_headers=SCHEDULE,
        )  # fmt: skip
        streamed_text = "".join(
            [e.delta async for e in stream if e.type == "response.output_text.delta"]
        )
        whole = await client.responses.create(
            model="sim", input=[{"role": "user", "content": PROMPT}], instructions=INSTRUCTIONS,
            extra_headers=SCHEDULE,
        )  # fmt: skip
    finally:
        assert proxy.stop(signal.SIGTERM) == 0
    with opened(tmp_path / "store") as store:
        rows = store.query_sync(f"SELECT {COLUMNS} FROM fathom.requests ORDER BY stream")
        samples = store.query_sync(
            "SELECT route, response_text, request_json FROM fathom.samples ORDER BY stream"
        )
    plain, streamed = rows
    events = REASONING + TOKENS + 3 * TOOLS
    route, _, ttft, ttfr, ttfa, tool, *rest = streamed
    assert route == "responses"
    assert near(ttfr, TTFT_MS) and ttft == ttfr  # ttft_ms: first content of any kind
    assert near(ttfa, TTFT_MS + REASONING * ITL_MS)  # the answer's first token
    assert near(tool, TTFT_MS + (REASONING + TOKENS) * ITL_MS)
    usage = [9, events, "usage", REASONING, "usage", TOOLS, BROKEN, "tool_calls"]
    assert rest == [*usage, events, 1]
    assert plain == ("responses", 0, None, None, None, None, *usage, 0, 1)
    # The answer text the probes score, and the request they re-ask, as the client saw them.
    assert [s[:2] for s in samples] == [("responses", whole.output_text),
                                        ("responses", streamed_text)]  # fmt: skip
    assert json.loads(samples[0][2])["input"] == [{"role": "user", "content": PROMPT}]


async def test_stream_failures_become_error_classes(simulator: str) -> None:
    async with proxied(simulator) as proxy:
        client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-t")
        headers = {**SCHEDULE, "x-sim-ttft-ms": "0", "x-sim-itl-ms": "0"}
        stream = await client.responses.create(
            model="sim", input=PROMPT, stream=True,
            extra_headers={**headers, "x-sim-fault": "error-event:4"},
        )  # fmt: skip
        kinds = [event.type async for event in stream]
        [record] = proxy.records.values()
    assert kinds[-1] == "error" and "response.completed" not in kinds
    assert (record.error, record.error_detail) == ("stream_error", "simulated failure mid-stream")
    assert record.chunks == 4 and record.tokens_source == "counted"


@pytest.mark.parametrize(
    ("route", "request_body"),
    [
        ("responses", {"model": "sim", "input": PROMPT, "instructions": INSTRUCTIONS}),
        ("messages", {"model": "sim", "max_tokens": 64, "messages": [
            {"role": "user", "content": PROMPT}]}),
    ],
)  # fmt: skip
async def test_probes_reask_through_the_endpoint_that_answered(
    simulator: str, route: str, request_body: dict[str, Any]
) -> None:
    settings = ProbeSettings(k=2)
    traffic = ProbeTraffic(
        aiohttp.ClientSession(), simulator + "/v1", settings, WorkerStats(), time.monotonic, "t"
    )
    async with traffic.session:
        url = traffic.url(route)
        replies = await reask(traffic.session, url, {**request_body, "stream": True}, k=2)
    assert url == simulator + "/v1/" + route
    assert len(replies.answers) == 2 and all(replies.answers) and not replies.errors
    # Input: the prompt (7 words) and any instructions (2); 8 answer tokens, the fixture's.
    input_words = 9 if route == "responses" else 7
    assert replies.tokens == 2 * (input_words + 8)
    assert prompt_text(request_body, chat=True) == PROMPT


@pytest.mark.parametrize("variant", ["nospace,crlf", "ping", "huge:200000"])
async def test_wire_variants_pass_through_and_are_measured(simulator: str, variant: str) -> None:
    headers = {**SCHEDULE, "x-sim-ttft-ms": "0", "x-sim-itl-ms": "0", "x-sim-wire": variant}
    direct = openai.AsyncOpenAI(base_url=simulator + "/v1", api_key="sk-direct")
    async with proxied(simulator) as proxy:
        through = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-proxied")
        assert await raw(through, True, headers) == await raw(direct, True, headers)
        [record] = proxy.records.values()
    events = REASONING + TOKENS + 3 * TOOLS
    assert (record.chunks, record.output_tokens, record.reasoning_tokens) == (
        events, events, REASONING
    )  # fmt: skip
    assert (record.tool_calls, record.tool_calls_invalid, record.error) == (TOOLS, BROKEN, "")


async def test_an_idle_upstream_ends_the_stream_with_an_error_event(simulator: str) -> None:
    async with proxied(simulator, idle_timeout_s=0.3) as proxy:
        client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-t")
        headers = {**SCHEDULE, "x-sim-ttft-ms": "0", "x-sim-itl-ms": "0",
                   "x-sim-fault": "stall:2:3"}  # fmt: skip
        stream = await client.responses.create(
            model="sim", input=PROMPT, stream=True, extra_headers=headers
        )
        events = [event async for event in stream]
        [record] = proxy.records.values()
    last = events[-1]
    assert last.type == "error" and last.code == "upstream_timeout" and "idle" in last.message
    assert record.error == "upstream_timeout" and record.chunks == 2


async def test_the_worker_scores_responses_and_messages_samples_by_reasking_there(
    simulator: str, scorer: Scorer, tmp_path: Path
) -> None:
    overrides = {"store": f"chdb://{tmp_path / 'db'}", "sample_rate": 1.0,
                 "writer_flush_s": 0.05, "spool_dir": str(tmp_path / "spool")}  # fmt: skip
    async with proxied(simulator, **overrides) as proxy, aiohttp.ClientSession() as session:
        store = proxy.service.store
        assert store is not None
        client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-user")
        await client.responses.create(model="sim", input=PROMPT, instructions=INSTRUCTIONS)
        body = {"model": "sim", "max_tokens": 64, "messages": [{"role": "user", "content": PROMPT}]}
        async with session.post(proxy.url + "/v1/messages", json=body) as resp:
            assert resp.status == 200

        async def stored() -> bool:
            return bool((await store.query("SELECT count() FROM fathom.samples"))[0][0] == 2)

        await until(stored)
        probe_settings = ProbeSettings(
            k=2, requests_per_min=1e5, tokens_per_min=1e9, canaries_per_round=0
        ).resolved(hostname="")
        async with client_session(probe_settings) as probe_session:
            worker = Worker(store, probe_session, proxy.url, scorer, [], probe_settings)
            await worker.step(asyncio.Event())
        scored = await store.query(
            "SELECT s.route, q.probe FROM fathom.quality AS q INNER JOIN fathom.samples AS s "
            "ON q.request_id = s.request_id ORDER BY s.route, q.probe"
        )
        reasked = sorted(r.route for r in proxy.records.values() if r.origin == "probe")
    probes = ["abstention", "consistency", "degeneration"]
    assert scored == [("messages", p) for p in probes] + [("responses", p) for p in probes]
    assert reasked == ["messages", "messages", "responses", "responses"]
    assert worker.stats.consistency_scored == 2 and worker.stats.errors == 0
