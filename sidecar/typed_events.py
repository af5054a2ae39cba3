"""Typed stream events: `/v1/responses` (`response.*`) and Anthropic-style `/v1/messages`.

Both APIs name each event in its JSON `type` (the SSE `event:` line repeats it). The timing
definitions are chat's (DESIGN.md): a content event carries reasoning, answer text or a tool
call; the time to first answer token (the TTFT a user feels) is the first event carrying
answer text or a tool call, after any reasoning. So:

- responses: answer = `response.output_text.delta`, `response.refusal.delta`, a function_call
  item added, `response.function_call_arguments.delta`; reasoning =
  `response.reasoning_text.delta`, `response.reasoning_summary_text.delta`; usage and finish
  from `response.completed` / `response.incomplete`; errors from `response.failed`, `error`.
- messages: answer = `content_block_delta` `text_delta`, a `tool_use` block started,
  `input_json_delta`; reasoning = `thinking_delta`; usage from `message_start` (input) and
  `message_delta` (output, stop_reason); errors from `error` (read by the caller).

Pure: a parsed JSON object in, a Chunk out.
"""

from __future__ import annotations

from typing import Any

from sidecar.chunk import EMPTY, Chunk, error_text
from sidecar.wire import response_finish, stop_finish

_ANSWER_DELTAS = frozenset({"response.output_text.delta", "response.refusal.delta"})
_REASONING_DELTAS = frozenset(
    {"response.reasoning_text.delta", "response.reasoning_summary_text.delta"}
)
_ENDINGS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def typed_chunk(obj: dict[str, Any]) -> Chunk:
    """Classify one typed event of either API (unknown types carry nothing)."""
    kind = obj["type"]
    if kind.startswith("response."):
        return _response_event(kind, obj)
    if kind == "error":  # responses' error event: code and message at the top
        return Chunk(error=error_text(obj))
    return _message_event(kind, obj)


def _response_event(kind: str, obj: dict[str, Any]) -> Chunk:
    if kind in _ANSWER_DELTAS:
        text = _str(obj.get("delta"))
        return Chunk(content=bool(text), answer=bool(text), text=text)
    if kind in _REASONING_DELTAS:
        return Chunk(content=bool(obj.get("delta")), reasoning=bool(obj.get("delta")))
    index = _int(obj.get("output_index"))
    if kind == "response.output_item.added":
        item = obj.get("item")
        if isinstance(item, dict) and item.get("type") == "function_call":
            return Chunk(content=True, answer=True, tool_calls=((0, index, ""),))
        return EMPTY
    if kind == "response.function_call_arguments.delta":
        return Chunk(content=True, answer=True, tool_calls=((0, index, _str(obj.get("delta"))),))
    if kind == "response.function_call_arguments.done":
        return Chunk(tool_final=((0, index, _str(obj.get("arguments"))),))
    response = obj.get("response")
    if kind in _ENDINGS and isinstance(response, dict):
        usage = response.get("usage")
        error = response.get("error") if kind == "response.failed" else None
        return Chunk(
            usage=usage if isinstance(usage, dict) else None,
            finish_reason=response_finish(response),
            model=_str(response.get("model")),
            error=error_text(error or "response failed") if kind == "response.failed" else "",
        )
    return EMPTY


def _message_event(kind: str, obj: dict[str, Any]) -> Chunk:
    index = _int(obj.get("index"))
    if kind == "content_block_delta":
        delta = obj.get("delta")
        return _block_delta(delta, index) if isinstance(delta, dict) else EMPTY
    if kind == "content_block_start":
        block = obj.get("content_block")
        if isinstance(block, dict) and block.get("type") == "tool_use":
            return Chunk(content=True, answer=True, tool_calls=((0, index, ""),))
        return EMPTY
    if kind == "message_start":
        message = obj.get("message")
        usage = message.get("usage") if isinstance(message, dict) else None
        model = message.get("model") if isinstance(message, dict) else ""
        given = usage.get("input_tokens") if isinstance(usage, dict) else None
        # Its output_tokens is a placeholder: the count comes in message_delta, or is counted.
        return Chunk(usage={"input_tokens": given} if given is not None else None,
                     model=_str(model))  # fmt: skip
    if kind == "message_delta":
        delta, usage = obj.get("delta"), obj.get("usage")
        stop = delta.get("stop_reason") if isinstance(delta, dict) else None
        return Chunk(usage=usage if isinstance(usage, dict) else None,
                     finish_reason=stop_finish(stop))  # fmt: skip
    return EMPTY


def _block_delta(delta: dict[str, Any], index: int) -> Chunk:
    kind = delta.get("type")
    if kind == "text_delta":
        text = _str(delta.get("text"))
        return Chunk(content=bool(text), answer=bool(text), text=text)
    if kind == "thinking_delta":
        return Chunk(content=bool(delta.get("thinking")), reasoning=bool(delta.get("thinking")))
    if kind == "input_json_delta":
        fragment = _str(delta.get("partial_json"))
        return Chunk(content=True, answer=True, tool_calls=((0, index, fragment),))
    return EMPTY


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
