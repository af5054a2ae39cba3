"""What every probe produces: a verdict on one item, which becomes one `fathom.quality` row."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

QUALITY_COLUMNS: tuple[str, ...] = (
    "ts", "request_id", "model", "deployment", "probe", "item_id", "score", "passed", "detail",
    "scorer",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe's verdict on one item: a `fathom.quality` row without its request context."""

    probe: str
    item_id: str
    score: float  # [0, 1], higher is better
    passed: bool | None  # None: the probe abstains (no verdict, only a score)
    detail: dict[str, Any]  # JSON-able
    scorer: str

    def __post_init__(self) -> None:
        if not (math.isfinite(self.score) and 0.0 <= self.score <= 1.0):
            raise ValueError(f"{self.probe} score {self.score!r} is not within [0, 1]")

    def detail_json(self) -> str:
        """`detail` as compact JSON (NaN and infinities refused: ClickHouse JSON readers choke)."""
        return json.dumps(
            self.detail, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False
        )

    def to_row(self, ts: datetime, request_id: str, model: str, deployment: str) -> dict[str, Any]:
        """The `fathom.quality` row (column -> value); request_id is '' for canaries."""
        return {
            "ts": ts,
            "request_id": request_id,
            "model": model,
            "deployment": deployment,
            "probe": self.probe,
            "item_id": self.item_id,
            "score": float(self.score),
            "passed": None if self.passed is None else int(self.passed),
            "detail": self.detail_json(),
            "scorer": self.scorer,
        }
