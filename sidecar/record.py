"""The per-request record: one row of `fathom.requests`, filled in as the request goes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sidecar.wire import LABELLED_ORIGINS

ROUTES = ("chat", "completion", "embedding", "other")
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
    extra: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        """The `fathom.requests` row (column name -> value); `extra` is not stored."""
        row = {name: getattr(self, name) for name in REQUEST_COLUMNS}
        row["stream"] = int(self.stream)
        row["sampled"] = int(self.sampled)
        return row


REQUEST_COLUMNS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(Record) if f.name != "extra"
)
