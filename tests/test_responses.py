"""`/v1/responses` with the real `openai` client against `fathom simulate`, directly and
through the proxy: the same bytes, and the stored figures the simulator was told to produce.

Expectations come from the x-sim-* headers (the schedule, the reasoning, the tool calls), not
from the code under test."""

from __future__ import annotations

import json

import openai

TTFT_MS, ITL_MS = 60, 15
REASONING, TOKENS, TOOLS, BROKEN = 3, 4, 2, 1
SCHEDULE = {
    "x-sim-ttft-ms": str(TTFT_MS), "x-sim-itl-ms": str(ITL_MS), "x-sim-tokens": str(TOKENS),
    "x-sim-reasoning-tokens": str(REASONING), "x-sim-tool-calls": str(TOOLS),
    "x-sim-tool-calls-broken": str(BROKEN), "x-sim-seed": "7",
}  # fmt: skip
PROMPT = "What is the weather in Paris today?"  # 7 words: the simulator's input tokens
INSTRUCTIONS = "Answer briefly."  # 2 more


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
