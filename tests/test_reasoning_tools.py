"""Reasoning and tool calls through a real `fathom serve` in front of `fathom simulate`, with the
real `openai` client: the stored times against the simulator's known schedule."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import openai

from tests.support import processes
from tests.support.proxied import proxied
from tests.support.schedule import near
from tests.support.store import opened

TTFT_MS, ITL_MS = 200, 50
REASONING, TOKENS, TOOLS, BROKEN = 4, 3, 2, 1
SCHEDULE = {
    "x-sim-ttft-ms": str(TTFT_MS), "x-sim-itl-ms": str(ITL_MS), "x-sim-tokens": str(TOKENS),
    "x-sim-reasoning-tokens": str(REASONING), "x-sim-tool-calls": str(TOOLS),
    "x-sim-tool-calls-broken": str(BROKEN),
}  # fmt: skip
MESSAGES: Any = [{"role": "user", "content": "Weather in Paris?"}]
COLUMNS = (
    "stream, ttft_ms, ttfr_ms, ttfa_ms, ttft_tool_ms, reasoning_tokens, reasoning_source, "
    "tool_calls, tool_calls_invalid, output_tokens, finish_reason"
)



async def test_stored_reasoning_answer_and_tool_timings(simulator: str, tmp_path: Path) -> None:
    proxy = processes.serve(simulator, tmp_path / "store", tmp_path / "spool",
                            FATHOM_WRITER_FLUSH_S="0.2", FATHOM_SAMPLE_RATE="0")  # fmt: skip
    try:
        client = openai.AsyncOpenAI(base_url=proxy.addresses["proxy"] + "/v1", api_key="sk-t")
        stream = await client.chat.completions.create(
            model="sim", messages=MESSAGES, stream=True, extra_headers=SCHEDULE
        )
        arguments: dict[int, str] = {}
        async for part in stream:
            for call in (part.choices[0].delta.tool_calls or []) if part.choices else []:
                arguments[call.index] = arguments.get(call.index, "") + (
                    call.function.arguments or "" if call.function else ""
                )
        whole = await client.chat.completions.create(
            model="sim", messages=MESSAGES, extra_headers=SCHEDULE
        )
    finally:
        assert proxy.stop(signal.SIGTERM) == 0
    assert [_valid(a) for _, a in sorted(arguments.items())] == [True, False]  # the client's view
    assert whole.choices[0].message.tool_calls and len(whole.choices[0].message.tool_calls) == 2
    with opened(tmp_path / "store") as store:
        rows = store.query_sync(f"SELECT {COLUMNS} FROM fathom.requests ORDER BY stream")
    plain, streamed = rows
    events = REASONING + TOKENS + 3 * TOOLS
    _, ttft, ttfr, ttfa, tool, reasoning, source, calls, invalid, output, finish = streamed
    assert near(ttfr, TTFT_MS) and ttft == ttfr  # ttft_ms: first content of any kind
    assert near(ttfa, TTFT_MS + REASONING * ITL_MS)  # the answer's first token
    assert near(tool, TTFT_MS + (REASONING + TOKENS) * ITL_MS)
    assert ttfr < ttfa < tool
    assert (reasoning, source, calls, invalid) == (REASONING, "usage", TOOLS, BROKEN)
    assert (output, finish) == (events, "tool_calls")
    # Not streamed: no times, the rest read from the body.
    assert plain[1:5] == (None, None, None, None)
    assert plain[5:] == (REASONING, "usage", TOOLS, BROKEN, events, "tool_calls")


async def test_reasoning_counted_when_the_upstream_sends_no_usage(simulator: str) -> None:
    async with proxied(simulator, inject_usage=False) as proxy:
        client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-t")
        headers = {**SCHEDULE, "x-sim-ttft-ms": "0", "x-sim-itl-ms": "0", "x-sim-tool-calls": "0"}
        stream = await client.chat.completions.create(
            model="sim", messages=MESSAGES, stream=True, extra_headers=headers
        )
        async for _ in stream:
            pass
        [record] = proxy.records.values()
    assert (record.reasoning_tokens, record.reasoning_source) == (REASONING, "counted")
    assert (record.tool_calls, record.ttft_tool_ms, record.tokens_source) == (0, None, "counted")
    assert record.ttfr_ms is not None and record.ttfa_ms is not None
    assert record.ttfr_ms <= record.ttfa_ms


def _valid(arguments: str) -> bool:
    try:
        return isinstance(json.loads(arguments), dict)
    except ValueError:
        return False
