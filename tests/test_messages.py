"""Anthropic-style `/v1/messages` through the proxy against `fathom simulate`, over raw HTTP:
the same bytes as direct, and the stored figures the simulator was told to produce.

Expectations come from the x-sim-* headers (the schedule, the thinking, the tool calls), not
from the code under test."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import aiohttp

from sidecar.sse import SSEParser
from tests.support import processes
from tests.support.proxied import proxied
from tests.support.schedule import near
from tests.support.store import opened

TTFT_MS, ITL_MS = 60, 15
THINKING, TOKENS, TOOLS, BROKEN = 3, 4, 2, 1
SCHEDULE = {
    "x-sim-ttft-ms": str(TTFT_MS), "x-sim-itl-ms": str(ITL_MS), "x-sim-tokens": str(TOKENS),
    "x-sim-reasoning-tokens": str(THINKING), "x-sim-tool-calls": str(TOOLS),
    "x-sim-tool-calls-broken": str(BROKEN), "x-sim-seed": "7",
    "anthropic-version": "2023-06-01",
}  # fmt: skip
PROMPT = "What is the weather in Paris today?"  # 7 words: the simulator's input tokens
BODY: dict[str, Any] = {
    "model": "sim", "max_tokens": 256, "system": "Answer briefly.",  # 2 more
    "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}],
}  # fmt: skip



async def post(base: str, stream: bool, headers: dict[str, str] = SCHEDULE) -> bytes:
    async with aiohttp.ClientSession() as session:
        body = {**BODY, "stream": stream}
        async with session.post(base + "/v1/messages", json=body, headers=headers) as resp:
            assert resp.status == 200
            return await resp.read()


def events(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in SSEParser().feed(data, 0.0) if e.data]


async def test_bytes_through_the_proxy_equal_direct(simulator: str) -> None:
    async with proxied(simulator) as proxy:
        for stream in (True, False):
            assert await post(proxy.url, stream) == await post(simulator, stream)
        records = sorted(proxy.records.values(), key=lambda r: r.stream)
    assert [(r.route, r.stream, r.error, r.status) for r in records] == [
        ("messages", False, "", 200), ("messages", True, "", 200)
    ]  # fmt: skip
    streamed = events(await post(simulator, True))
    assert streamed[0]["type"] == "message_start" and streamed[-1]["type"] == "message_stop"


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
        streamed_events = events(await post(proxy.addresses["proxy"], True))
        whole = json.loads(await post(proxy.addresses["proxy"], False))
    finally:
        assert proxy.stop(signal.SIGTERM) == 0
    with opened(tmp_path / "store") as store:
        rows = store.query_sync(f"SELECT {COLUMNS} FROM fathom.requests ORDER BY stream")
        samples = store.query_sync(
            "SELECT route, response_text, request_json FROM fathom.samples ORDER BY stream"
        )
    plain, streamed = rows
    events_sent = THINKING + TOKENS + 3 * TOOLS
    route, _, ttft, ttfr, ttfa, tool, *rest = streamed
    assert route == "messages"
    assert near(ttfr, TTFT_MS) and ttft == ttfr  # ttft_ms: first content of any kind
    assert near(ttfa, TTFT_MS + THINKING * ITL_MS)  # the answer's first token
    assert near(tool, TTFT_MS + (THINKING + TOKENS) * ITL_MS)
    # Messages' usage names no thinking tokens: they are counted from the stream.
    tools = [TOOLS, BROKEN, "tool_calls"]
    assert rest == [9, events_sent, "usage", THINKING, "counted", *tools, events_sent, 1]
    assert plain == ("messages", 0, None, None, None, None, 9, events_sent, "usage", 0, "none",
                     *tools, 0, 1)  # fmt: skip
    # The answer text the probes score, and the request they re-ask, as the client saw them.
    deltas = [e["delta"] for e in streamed_events if e["type"] == "content_block_delta"]
    text = "".join(d["text"] for d in deltas if d["type"] == "text_delta")
    said = "".join(b["text"] for b in whole["content"] if b["type"] == "text")
    assert text == said != ""
    assert samples[0][:2] == ("messages", said) and samples[1][:2] == ("messages", text)
    assert json.loads(samples[0][2])["messages"] == BODY["messages"]


async def test_an_error_event_becomes_the_error_class(simulator: str) -> None:
    async with proxied(simulator) as proxy:
        headers = {**SCHEDULE, "x-sim-ttft-ms": "0", "x-sim-itl-ms": "0",
                   "x-sim-fault": "error-event:4"}  # fmt: skip
        streamed = events(await post(proxy.url, True, headers))
        [record] = proxy.records.values()
    failure = {"type": "api_error", "message": "simulated failure mid-stream"}
    assert streamed[-1] == {"type": "error", "error": failure}
    assert (record.error, record.error_detail) == ("stream_error", "simulated failure mid-stream")
    # No message_delta: the output is counted (message_start's output_tokens is a placeholder).
    assert (record.chunks, record.output_tokens, record.tokens_source) == (4, 4, "counted")
    assert record.input_tokens == 9


async def test_an_idle_upstream_ends_the_stream_with_an_error_event(simulator: str) -> None:
    async with proxied(simulator, idle_timeout_s=0.3) as proxy:
        headers = {**SCHEDULE, "x-sim-ttft-ms": "0", "x-sim-itl-ms": "0",
                   "x-sim-fault": "stall:2:3"}  # fmt: skip
        streamed = events(await post(proxy.url, True, headers))
        [record] = proxy.records.values()
    assert streamed[-1]["type"] == "error"
    assert streamed[-1]["error"]["type"] == "upstream_timeout"
    assert record.error == "upstream_timeout" and record.chunks == 2
