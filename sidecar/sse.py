"""Server-sent events: a pure, tolerant parser and the per-stream timing it feeds.

No I/O here: bytes and clock readings go in, events and figures come out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from sidecar.chunk import DONE, EMPTY, Chunk, error_text
from sidecar.toolcalls import Piece, ToolCalls
from sidecar.typed_events import typed_chunk

# Lines end with CRLF, CR or LF, and nothing else (str.splitlines would also split on U+2028).
_EOL = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Event:
    """One SSE event: its exact bytes (blank-line terminator included) and its parsed data."""

    raw: bytes
    data: bytes | None  # joined `data:` lines; None for comment-only or unparsed events
    at: float


class SSEParser:
    """Splits a byte stream into events, keeping every byte for pass-through.

    An event larger than `max_event_bytes` is handed on unparsed as it arrives, so a hostile
    or broken upstream can neither exhaust memory nor stall the stream.
    """

    def __init__(self, max_event_bytes: int = 16 * 1024 * 1024) -> None:
        self._max = max_event_bytes
        self._buf = bytearray()
        self._line_start = 0  # start of the line being read
        self._scan = 0  # where to resume looking for a line end
        self._data: list[bytes] = []
        self._oversized = False  # inside an event too big to parse: pass bytes through

    def feed(self, chunk: bytes, now: float) -> list[Event]:
        """Add bytes received at `now`; return the events they complete."""
        self._buf += chunk
        return self._drain(now, final=False)

    def finish(self, now: float) -> list[Event]:
        """End of stream: whatever is left becomes a last (possibly partial) event."""
        events = self._drain(now, final=True)
        if self._buf:
            if self._line_start < len(self._buf) and not self._oversized:
                self._field(bytes(self._buf[self._line_start :]))
            events.append(self._dispatch(len(self._buf), now))
        return events

    def _drain(self, now: float, final: bool) -> list[Event]:
        events: list[Event] = []
        while (line := self._next_line(final)) is not None:
            content, end = line
            if content:
                if not self._oversized:
                    self._field(content)
                continue
            events.append(self._dispatch(end, now))
        if len(self._buf) > self._max:
            events.append(self._spill(now))
        return events

    def _next_line(self, final: bool) -> tuple[bytes, int] | None:
        match = _EOL.search(self._buf, self._scan)
        if match is None:
            self._scan = len(self._buf)
            return None
        if match.group() == b"\r" and match.end() == len(self._buf) and not final:
            self._scan = match.start()  # might be the first half of CRLF: wait for more
            return None
        content = bytes(self._buf[self._line_start : match.start()])
        self._line_start = self._scan = match.end()
        return content, match.end()

    def _field(self, line: bytes) -> None:
        if line.startswith(b":"):
            return  # comment, e.g. a keep-alive `: ping`
        name, _, value = line.partition(b":")
        if name == b"data":
            self._data.append(value[1:] if value.startswith(b" ") else value)

    def _dispatch(self, end: int, now: float) -> Event:
        raw = bytes(self._buf[:end])
        del self._buf[:end]
        data = None if self._oversized or not self._data else b"\n".join(self._data)
        self._data.clear()
        self._line_start = self._scan = 0
        self._oversized = False
        return Event(raw=raw, data=data, at=now)

    def _spill(self, now: float) -> Event:
        # Hand on everything up to the current line's start plus the partial line itself.
        keep_cr = self._buf.endswith(b"\r")
        cut = len(self._buf) - 1 if keep_cr else len(self._buf)
        raw = bytes(self._buf[:cut])
        del self._buf[:cut]
        self._line_start = self._scan = 0
        self._data.clear()
        self._oversized = True
        return Event(raw=raw, data=None, at=now)


def classify(data: bytes | None) -> Chunk:
    """Read an event's data: an OpenAI chat or completions chunk, or a typed event
    (`/v1/responses`, `/v1/messages`: named by their JSON `type`)."""
    if data is None:
        return EMPTY
    if data.strip() == b"[DONE]":
        return DONE
    try:
        obj = json.loads(data.decode("utf-8", "replace"))
    except ValueError:
        return EMPTY
    if not isinstance(obj, dict):
        return EMPTY
    if obj.get("error"):
        return Chunk(error=error_text(obj["error"]))
    if isinstance(obj.get("type"), str) and "choices" not in obj:
        return typed_chunk(obj)
    choices = obj.get("choices") or []
    usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else None
    read = _Choices()
    read.scan(choices)
    return Chunk(
        content=read.reasoning or read.answer,
        usage_only=not choices and usage is not None,
        usage=usage,
        finish_reason=read.finish,
        model=str(obj.get("model") or ""),
        text="".join(read.texts),
        reasoning=read.reasoning,
        answer=read.answer,
        tool_calls=tuple(read.tools),
    )


@dataclass(slots=True)
class _Choices:
    """What the choices of one chunk carry: answer text, reasoning, tool-call pieces."""

    texts: list[str] = field(default_factory=list)
    tools: list[Piece] = field(default_factory=list)
    reasoning: bool = False
    answer: bool = False
    finish: str = ""

    def scan(self, choices: Any) -> None:
        for position, choice in enumerate(choices if isinstance(choices, list) else []):
            if not isinstance(choice, dict):
                continue
            self.finish = str(choice.get("finish_reason") or self.finish)
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._delta(delta, _index(choice.get("index"), position))
            elif choice.get("text"):
                self.answer = True
                self.texts.append(str(choice["text"]))

    def _delta(self, delta: dict[str, Any], choice: int) -> None:
        if delta.get("content"):
            self.answer = True
            self.texts.append(str(delta["content"]))
        if delta.get("reasoning") or delta.get("reasoning_content"):
            self.reasoning = True
        calls = delta.get("tool_calls")
        if calls:
            self.answer = True
            for position, call in enumerate(calls if isinstance(calls, list) else []):
                if isinstance(call, dict):
                    self.tools.append((choice, _index(call.get("index"), position), _args(call)))


def _index(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _args(call: dict[str, Any]) -> str:
    function = call.get("function")
    arguments = function.get("arguments") if isinstance(function, dict) else None
    return arguments if isinstance(arguments, str) else ""


@dataclass(slots=True)
class StreamTiming:
    """Content-event times of one stream, and the figures DESIGN.md defines from them."""

    first: float | None = None
    last: float | None = None
    gaps: list[float] = field(default_factory=list)
    events: int = 0

    def content_at(self, now: float) -> None:
        """Note a content event received at `now` (seconds)."""
        if self.last is not None:
            self.gaps.append(now - self.last)
        else:
            self.first = now
        self.last = now
        self.events += 1

    def itl_ms(self) -> tuple[float, float, float, float] | None:
        """(mean, p50, p99, max) of inter-token gaps in ms, or None with fewer than two events."""
        if not self.gaps:
            return None
        ordered = sorted(self.gaps)
        mean = sum(ordered) / len(ordered)
        return (
            mean * 1e3,
            percentile(ordered, 0.50) * 1e3,
            percentile(ordered, 0.99) * 1e3,
            ordered[-1] * 1e3,
        )

    def decode_tps(self, output_tokens: int) -> float | None:
        """(output_tokens - 1) / (last content time - first), or None when undefined."""
        if self.first is None or self.last is None or output_tokens < 2:
            return None
        span = self.last - self.first
        return (output_tokens - 1) / span if span > 0 else None


@dataclass(slots=True)
class PartTiming:
    """When a stream's reasoning, answer and first tool call began; its tool calls' arguments.

    The answer begins with the first event carrying answer text or a tool call: for a
    reasoning model, the end of the wait a user feels (DESIGN.md, time to first answer token).
    """

    reasoning_at: float | None = None
    answer_at: float | None = None
    tool_at: float | None = None
    reasoning_events: int = 0
    tools: ToolCalls | None = None  # made at the first tool-call piece: most answers have none

    def note(self, chunk: Chunk, now: float) -> None:
        """Fold in a content event received at `now` (seconds)."""
        if chunk.reasoning:
            self.reasoning_events += 1
            if self.reasoning_at is None:
                self.reasoning_at = now
        if chunk.answer and self.answer_at is None:
            self.answer_at = now
        if chunk.tool_calls:
            if self.tools is None:
                self.tools, self.tool_at = ToolCalls(), now
            self.tools.add(chunk.tool_calls)

    def settle(self, chunk: Chunk) -> None:
        """Fold in tool calls' whole arguments, restated at their end (not a content event)."""
        if chunk.tool_final and self.tools is not None:
            self.tools.settle(chunk.tool_final)


def percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted, non-empty list."""
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
