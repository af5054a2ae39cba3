"""Typed stream events of `/v1/responses` and `/v1/messages`: what each one counts as, and the
non-streamed answers and prompts of both APIs. Event shapes follow the `openai` client's
typed models (openai/types/responses) and Anthropic's documented stream."""

from __future__ import annotations

import json
from typing import Any

from sidecar.proxy import route_of
from sidecar.record import Record
from sidecar.sse import PartTiming, classify
from sidecar.wire import parse_answer, prompt_text


def event(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


def response(status: str, **more: Any) -> dict[str, Any]:
    return {"id": "resp_1", "object": "response", "model": "m", "status": status, **more}


def test_responses_events() -> None:
    text = classify(
        event(
            {
                "type": "response.output_text.delta",
                "delta": "Hi",
                "item_id": "m",
                "output_index": 1,
                "content_index": 0,
                "sequence_number": 5,
                "logprobs": [],
            }
        )
    )
    assert (text.content, text.answer, text.reasoning, text.text) == (True, True, False, "Hi")
    for kind in ("response.reasoning_text.delta", "response.reasoning_summary_text.delta"):
        think = classify(event({"type": kind, "delta": "hmm", "output_index": 0}))
        assert (think.content, think.reasoning, think.answer, think.text) == (True, True, False, "")
    for kind in ("response.created", "response.in_progress", "response.output_text.done"):
        assert not classify(event({"type": kind, "response": response("in_progress")})).content
    message = {"type": "message", "id": "m", "role": "assistant", "content": []}
    added = {"type": "response.output_item.added", "output_index": 0}
    assert not classify(event({**added, "item": message})).content
    call = {"type": "function_call", "call_id": "c", "name": "f", "arguments": ""}
    started = classify(event({**added, "output_index": 2, "item": call}))
    assert started.answer and started.tool_calls == ((0, 2, ""),)
    piece = classify(
        event(
            {
                "type": "response.function_call_arguments.delta",
                "delta": '{"a"',
                "item_id": "c",
                "output_index": 2,
            }
        )
    )
    assert piece.answer and piece.tool_calls == ((0, 2, '{"a"'),)
    done = classify(
        event(
            {
                "type": "response.function_call_arguments.done",
                "arguments": '{"a": 1}',
                "item_id": "c",
                "output_index": 2,
            }
        )
    )
    assert not done.content and done.tool_final == ((0, 2, '{"a": 1}'),)


def test_responses_endings_give_usage_finish_and_errors() -> None:
    usage = {
        "input_tokens": 7,
        "output_tokens": 12,
        "total_tokens": 19,
        "output_tokens_details": {"reasoning_tokens": 4},
    }
    completed = classify(
        event(
            {
                "type": "response.completed",
                "response": response("completed", usage=usage, output=[]),
            }
        )
    )
    assert completed.usage == usage and completed.finish_reason == "stop" and not completed.error
    cut = response("incomplete", incomplete_details={"reason": "max_output_tokens"})
    incomplete = classify(event({"type": "response.incomplete", "response": cut}))
    assert incomplete.finish_reason == "length" and not incomplete.error
    broken = response("failed", error={"code": "server_error", "message": "boom"})
    assert classify(event({"type": "response.failed", "response": broken})).error == "boom"
    error = classify(event({"type": "error", "code": "rate_limit", "message": "slow down"}))
    assert error.error == "slow down"
    record = Record(ts=None, request_id="r", route="responses")  # type: ignore[arg-type]
    record.apply_usage(usage)
    assert (record.input_tokens, record.output_tokens, record.reasoning_tokens) == (7, 12, 4)


def test_messages_events() -> None:
    start = classify(
        event(
            {
                "type": "message_start",
                "message": {
                    "id": "msg",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "claude",
                    "usage": {"input_tokens": 25, "output_tokens": 1},
                },
            }
        )
    )
    assert start.usage == {"input_tokens": 25} and not start.content  # output: a placeholder

    def delta(index: int, body: dict[str, Any]) -> bytes:
        return event({"type": "content_block_delta", "index": index, "delta": body})

    think = classify(delta(0, {"type": "thinking_delta", "thinking": "let me see"}))
    assert think.reasoning and think.content and not think.answer
    assert not classify(delta(0, {"type": "signature_delta", "signature": "abc"})).content
    text = classify(delta(1, {"type": "text_delta", "text": "Paris"}))
    assert text.answer and text.text == "Paris"
    tool = {"type": "tool_use", "id": "t", "name": "f", "input": {}}
    opened = classify(event({"type": "content_block_start", "index": 2, "content_block": tool}))
    assert opened.answer and opened.tool_calls == ((0, 2, ""),)
    text_block = {"type": "text", "text": ""}
    assert not classify(
        event({"type": "content_block_start", "index": 1, "content_block": text_block})
    ).content
    args = classify(delta(2, {"type": "input_json_delta", "partial_json": '{"c": 1}'}))
    assert args.tool_calls == ((0, 2, '{"c": 1}'),)
    end = classify(
        event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "max_tokens"},
                "usage": {"output_tokens": 15},
            }
        )
    )
    assert end.finish_reason == "length" and end.usage == {"output_tokens": 15}
    error = classify(
        event({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    )
    assert error.error == "Overloaded"
    record = Record(ts=None, request_id="r", route="messages")  # type: ignore[arg-type]
    assert start.usage is not None
    record.apply_usage(start.usage)
    assert (record.input_tokens, record.output_tokens, record.tokens_source) == (25, 0, "none")
    record.apply_usage({"output_tokens": 15})
    assert (record.input_tokens, record.output_tokens, record.tokens_source) == (25, 15, "usage")


def test_restated_arguments_replace_the_fragments() -> None:
    parts = PartTiming()
    parts.note(
        classify(
            event(
                {
                    "type": "response.function_call_arguments.delta",
                    "delta": '{"a": ',
                    "output_index": 0,
                }
            )
        ),
        1.0,
    )
    assert parts.tools is not None and parts.tools.invalid() == 1
    parts.settle(
        classify(
            event(
                {
                    "type": "response.function_call_arguments.done",
                    "arguments": '{"a": 2}',
                    "output_index": 0,
                }
            )
        )
    )
    assert (parts.tools.count(), parts.tools.invalid(), parts.tool_at) == (1, 0, 1.0)


def test_whole_answers_of_responses_and_messages() -> None:
    output = [
        {"type": "reasoning", "id": "r", "summary": [{"type": "summary_text", "text": "think"}]},
        {
            "type": "message",
            "id": "m",
            "role": "assistant",
            "status": "completed",
            "content": [
                {"type": "output_text", "text": "Paris is ", "annotations": []},
                {"type": "output_text", "text": "the capital.", "annotations": []},
            ],
        },
    ]
    usage = {"input_tokens": 9, "output_tokens": 5, "total_tokens": 14}
    answer = parse_answer(response("completed", output=output, usage=usage))
    assert (answer.text, answer.finish_reason, answer.tokens) == (
        "Paris is the capital.",
        "stop",
        14,
    )
    message = {
        "id": "msg",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "thinking", "thinking": "hm"}, {"type": "text", "text": "Lyon."}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 2},
    }
    answer = parse_answer(json.dumps(message))
    assert (answer.text, answer.finish_reason, answer.tokens) == ("Lyon.", "stop", 5)


def test_prompts_of_responses_and_messages() -> None:
    assert (
        prompt_text({"model": "m", "input": "What is 2+2?", "instructions": "Be brief."}, chat=True)
        == "What is 2+2?"
    )
    items = [
        {"role": "user", "content": "first"},
        {"type": "message", "role": "assistant", "content": "ok"},
        {"type": "function_call_output", "call_id": "c", "output": "42"},
        {"role": "user", "content": [{"type": "input_text", "text": "second"}]},
    ]
    assert prompt_text({"input": items}, chat=True) == "second"
    anthropic = {
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]}],
    }
    assert prompt_text(anthropic, chat=True) == "Capital of France?"


def test_routes_of_paths() -> None:
    expected = {
        "/v1/chat/completions": "chat", "/v1/completions": "completion",
        "/v1/embeddings": "embedding", "/v1/responses": "responses", "/v1/responses/": "responses",
        "/openai/v1/responses": "responses", "/v1/messages": "messages",
        # Other operations that merely end alike: stored chat messages, Assistants threads,
        # a stored response, Anthropic's token counting.
        "/v1/chat/completions/cmpl_1/messages": "other", "/v1/threads/t_1/messages": "other",
        "/v1/responses/resp_1": "other", "/v1/messages/count_tokens": "other",
    }  # fmt: skip
    assert {path: route_of(path) for path in expected} == expected


def test_a_chat_chunk_with_a_type_field_stays_a_chat_chunk() -> None:
    chunk = {"type": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "a"}}]}
    assert classify(event(chunk)).text == "a"
