"""Server-sent events: a pure, tolerant parser and the per-stream timing it feeds.

No I/O here: bytes and clock readings go in, events and figures come out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(frozen=True, slots=True)
class Chunk:
    """What one event's JSON says that the proxy cares about."""

    content: bool = False
    done: bool = False
    usage_only: bool = False
    usage: dict[str, Any] | None = None
    finish_reason: str = ""
    model: str = ""
    error: str = ""
    text: str = ""


DONE = Chunk(done=True)
EMPTY = Chunk()


def classify(data: bytes | None) -> Chunk:
    """Read an event's data as an OpenAI stream chunk (chat or completions)."""
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
        return Chunk(error=_error_text(obj["error"]))
    choices = obj.get("choices") or []
    usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else None
    text, content, finish = _read_choices(choices)
    return Chunk(
        content=content,
        usage_only=not choices and usage is not None,
        usage=usage,
        finish_reason=finish,
        model=str(obj.get("model") or ""),
        text=text,
    )


def _read_choices(choices: Any) -> tuple[str, bool, str]:
    texts: list[str] = []
    content = False
    finish = ""
    for choice in choices if isinstance(choices, list) else []:
        if not isinstance(choice, dict):
            continue
        finish = str(choice.get("finish_reason") or finish)
        delta = choice.get("delta")
        if isinstance(delta, dict):
            for key in ("content", "reasoning", "reasoning_content"):
                if delta.get(key):
                    content = True
                    if key == "content":
                        texts.append(str(delta[key]))
            content = content or bool(delta.get("tool_calls"))
        elif choice.get("text"):
            content = True
            texts.append(str(choice["text"]))
    return "".join(texts), content, finish


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error.get("type") or "error")[:200]
    return str(error)[:200]


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


def percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted, non-empty list."""
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
