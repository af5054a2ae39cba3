"""OpenAI JSON shapes and SSE bytes, in the variants a proxy must tolerate. Pure."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

from fathom.sim.models import BadKnob

HUGE_DEFAULT = 1 << 20
HUGE_MAX = 1 << 26


@dataclass(frozen=True, slots=True)
class Wire:
    """SSE spellings a proxy must tolerate."""

    nospace: bool = False  # `data:{...}`
    crlf: bool = False  # CRLF line endings
    ping: bool = False  # `: ping` comment before every event
    huge_bytes: int = 0  # padding on the first content event


def parse_wire(text: str) -> Wire:
    """Parse an `x-sim-wire` header."""
    flags = {"nospace": False, "crlf": False, "ping": False}
    huge = 0
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, size = item.partition(":")
        if name in flags and not size:
            flags[name] = True
        elif name == "huge" and (not size or (size.isdigit() and int(size) <= HUGE_MAX)):
            huge = int(size) if size else HUGE_DEFAULT
        else:
            raise BadKnob(
                f"x-sim-wire: cannot follow {item!r} (nospace, crlf, ping, huge[:N <= {HUGE_MAX}])"
            )
    return Wire(huge_bytes=huge, **flags)


# OpenAI's error `type` (and `code`) per status, as its API answers them.
ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error object for an HTTP status."""
    kind, default_code = ERROR_KINDS.get(status, ("server_error", None))
    return {"error": {"message": message, "type": kind, "param": None,
                      "code": code or default_code}}  # fmt: skip


def envelope(
    model: str, chat: bool, stream: bool, created: int, choices: list[dict[str, Any]]
) -> dict[str, Any]:
    """The fields every completion object and chunk carries."""
    kind = "chat.completion" if chat else "text_completion"
    return {
        # A fixed id keeps responses byte-comparable across requests (direct vs proxied).
        "id": "chatcmpl-sim" if chat else "cmpl-sim",
        "object": kind + ".chunk" if stream and chat else kind,
        "created": created,
        "model": model,
        "choices": choices,
    }


def chunk(
    model: str, chat: bool, created: int, delta: dict[str, Any] | str, finish: str | None
) -> dict[str, Any]:
    """One streamed chunk: a delta (chat) or a piece of text (completions)."""
    choice: dict[str, Any] = {"index": 0}
    if chat:
        choice["delta"] = delta
    else:
        choice["text"] = delta
    choice.update(logprobs=None, finish_reason=finish)
    return envelope(model, chat, True, created, [choice])


class ContentChunks:
    """Content chunks of one response, pre-encoded around the token: one small dumps each.

    Bytes are exactly those of `dumps(chunk(...))`; a stream of hundreds of events per
    second per connection spends its CPU here, and a burst of due events waits on it.
    """

    _MARK = "\x00token\x00"

    def __init__(self, model: str, chat: bool, created: int) -> None:
        delta: dict[str, Any] | str = {"content": self._MARK} if chat else self._MARK
        self._head, self._tail = dumps(chunk(model, chat, created, delta, None)).split(
            dumps(self._MARK)
        )

    def encode(self, token: str) -> bytes:
        """The chunk carrying `token`."""
        return self._head + dumps(token) + self._tail


def with_fields(encoded: bytes, fields: dict[str, Any]) -> bytes:
    """An encoded JSON object with more fields at its end."""
    return encoded[:-1] + b"," + dumps(fields)[1:]


def completion(
    model: str,
    chat: bool,
    created: int,
    text: str,
    finish: str,
    usage: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A whole, non-streamed completion; `extra`: more message fields (reasoning, tool calls)."""
    choice: dict[str, Any] = {"index": 0}
    if chat:
        choice["message"] = {"role": "assistant", "content": text, "refusal": None, **(extra or {})}
    else:
        choice["text"] = text
    choice.update(logprobs=None, finish_reason=finish)
    return {**envelope(model, chat, False, created, [choice]), "usage": usage}


def usage(prompt_tokens: int, completion_tokens: int, reasoning: int = 0) -> dict[str, Any]:
    """The usage object; with reasoning, its completion_tokens_details too."""
    out: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                           "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip
    if reasoning:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return out


def reasoning_piece(i: int) -> str:
    """The text of reasoning event i."""
    return f"step {i}. "


def tool_call_deltas(index: int, arguments: str) -> list[dict[str, Any]]:
    """The three deltas a streamed tool call takes: its name, then its arguments in two."""
    half = len(arguments) // 2
    head = {"index": index, "id": f"call_{index}", "type": "function",
            "function": {"name": "lookup", "arguments": ""}}  # fmt: skip
    pieces = (arguments[:half], arguments[half:])
    return [{"tool_calls": [head]}] + [
        {"tool_calls": [{"index": index, "function": {"arguments": p}}]} for p in pieces
    ]


def tool_calls_message(arguments: tuple[str, ...]) -> list[dict[str, Any]]:
    """`message.tool_calls` of a non-streamed answer."""
    return [
        {"id": f"call_{i}", "type": "function", "function": {"name": "lookup", "arguments": a}}
        for i, a in enumerate(arguments)
    ]


def embedding(text: str, dimensions: int, as_base64: bool) -> list[float] | str:
    """A deterministic unit-free vector from a hash of the text, as floats or base64 float32."""
    seed = hashlib.sha256(text.encode()).digest()
    raw = (seed * (dimensions // len(seed) + 1))[:dimensions]
    vector = [round(b / 255 - 0.5, 4) for b in raw]
    if as_base64:
        return base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
    return vector


def dumps(obj: Any) -> bytes:
    """Compact JSON, as servers send it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def sse(payload: bytes, wire: Wire, event: str = "") -> bytes:
    """One SSE event carrying `payload` in its `data` field (named `event` when given: the
    typed APIs name each event), spelled per the wire variant."""
    eol = b"\r\n" if wire.crlf else b"\n"
    ping = b": ping" + eol + eol if wire.ping else b""
    space = b"" if wire.nospace else b" "
    named = b"event:" + space + event.encode() + eol if event else b""
    return ping + named + b"data:" + space + payload + eol + eol
