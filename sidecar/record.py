"""The per-request record: one row of `fathom.requests`, filled in as the request goes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sidecar.sse import PartTiming
    from sidecar.toolcalls import ToolCalls

from sidecar.wire import LABELLED_ORIGINS

ROUTES = ("chat", "completion", "embedding", "responses", "messages", "other")
ORIGINS = ("user", *LABELLED_ORIGINS)
TOKENS_SOURCES = ("usage", "counted", "none")


@dataclass(slots=True)
class Record:
    """What the proxy learned about one request; `to_row()` is its `fathom.requests` row."""

    ts: datetime
    request_id: str
    route: str
    model: str = ""
    deployment: str = ""
    origin: str = "user"
    stream: bool = False
    status: int = 0
    error: str = ""
    error_detail: str = ""
    finish_reason: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    tokens_source: str = "none"
    ttfb_ms: float | None = None
    ttft_ms: float | None = None
    e2e_ms: float = 0.0
    itl_mean_ms: float | None = None
    itl_p50_ms: float | None = None
    itl_p99_ms: float | None = None
    itl_max_ms: float | None = None
    decode_tps: float | None = None
    chunks: int = 0
    sampled: bool = False
    client: str = ""
    upstream: str = ""
    path: str = ""
    request_bytes: int = 0
    response_bytes: int = 0
    # Reasoning and tool calls (migration 003); the times are ms from t0, streams only.
    ttfr_ms: float | None = None  # first reasoning event
    ttfa_ms: float | None = None  # first answer event: answer text or a tool call
    ttft_tool_ms: float | None = None  # first tool-call event
    reasoning_tokens: int = 0
    reasoning_source: str = "none"  # like tokens_source: 'usage', 'counted' or 'none'
    tool_calls: int = 0
    tool_calls_invalid: int = 0  # calls whose arguments do not parse as a JSON object
    tenant: str = ""  # migration 005; see ProxySettings.tenant_header
    extra: dict[str, Any] = field(default_factory=dict)

    def apply_usage(self, usage: dict[str, Any]) -> None:
        """Token counts from a `usage` object (chat, completions, responses or messages names)."""
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        completion = usage.get("completion_tokens", usage.get("output_tokens"))
        if completion is None and "total_tokens" in usage:
            completion = 0  # embeddings: nothing generated
        # Messages streams split usage: input in message_start, output in message_delta.
        if isinstance(prompt, int):
            self.input_tokens = prompt
        if isinstance(completion, int):
            self.output_tokens, self.tokens_source = completion, "usage"
        details = usage.get("completion_tokens_details", usage.get("output_tokens_details"))
        reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
        if isinstance(reasoning, int) and not isinstance(reasoning, bool) and reasoning >= 0:
            self.reasoning_tokens, self.reasoning_source = reasoning, "usage"

    def fold_parts(self, parts: PartTiming, t0: float) -> None:
        """Reasoning and tool-call figures of a stream (DESIGN.md: time to first answer token)."""
        if parts.reasoning_at is not None:
            self.ttfr_ms = (parts.reasoning_at - t0) * 1e3
        if parts.answer_at is not None:
            self.ttfa_ms = (parts.answer_at - t0) * 1e3
        if parts.tool_at is not None:
            self.ttft_tool_ms = (parts.tool_at - t0) * 1e3
        if self.reasoning_source == "none" and self.stream:
            self.reasoning_tokens, self.reasoning_source = parts.reasoning_events, "counted"
        if parts.tools is not None:
            self.count_tools(parts.tools)

    def count_tools(self, tools: ToolCalls) -> None:
        """How many tool calls the answer made, and how many have arguments that do not parse."""
        self.tool_calls, self.tool_calls_invalid = tools.count(), tools.invalid()

    def to_row(self) -> dict[str, Any]:
        """The `fathom.requests` row (column name -> value); `extra` is not stored."""
        row = {name: getattr(self, name) for name in REQUEST_COLUMNS}
        row["stream"] = int(self.stream)
        row["sampled"] = int(self.sampled)
        return row


REQUEST_COLUMNS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(Record) if f.name != "extra"
)
