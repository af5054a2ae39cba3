"""How the report writes its figures, the same in HTML, markdown and the demo's summary."""

from __future__ import annotations

from datetime import datetime, timedelta

MISSING = "\u2013"  # en dash: not measured
# A speed change this large (in percent) is coloured; smaller ones are within normal drift.
NOTABLE_SPEED_CHANGE_PCT = 10.0


def value(x: float | None, unit: str = "") -> str:
    """'312 ms', '41.2 tok/s', '0.800'; a dash when not measured."""
    if x is None:
        return MISSING
    digits = 0 if abs(x) >= 100 else 1 if abs(x) >= 10 else 2 if unit else 3
    text = f"{x:,.{digits}f}"
    return f"{text} {unit}" if unit else text


def pct(x: float | None) -> str:
    """A share as a percentage: '90.0%'."""
    return MISSING if x is None else f"{x * 100:.1f}%"


def signed_pct(x: float | None) -> str:
    """A relative change: '+12.3%'."""
    return MISSING if x is None else f"{x:+.1f}%"


def p_value(x: float | None) -> str:
    """A p-value to three significant digits (small ones stay readable: 0.000123)."""
    return MISSING if x is None else f"{x:.3g}"


def signed(x: float | None) -> str:
    """An absolute change of a score: '-0.081'."""
    return MISSING if x is None else f"{x:+.3f}"


def interval(low: float | None, high: float | None, as_pct: bool = False) -> str:
    """'[0.781, 0.819]' or '[85.2%, 93.1%]'."""
    if low is None or high is None:
        return ""
    if as_pct:
        return f"[{pct(low)}, {pct(high)}]"
    return f"[{low:.3f}, {high:.3f}]"


def speed_change_class(change: float | None, better: str) -> str:
    """'worse', 'better' or '' for a speed change in percent."""
    if change is None or abs(change) < NOTABLE_SPEED_CHANGE_PCT:
        return ""
    improved = change < 0 if better == "lower" else change > 0
    return "better" if improved else "worse"


def quality_change_class(change: float | None, significant: bool) -> str:
    """'worse', 'better' or '' for a significant change of a mean score."""
    if change is None or not significant or change == 0:
        return ""
    return "better" if change > 0 else "worse"


def when(ts: datetime) -> str:
    """'2025-01-08 12:00 UTC'."""
    return f"{ts:%Y-%m-%d %H:%M} UTC"


def span(length: timedelta) -> str:
    """'7d', '6h', '90m'."""
    seconds = int(length.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def percentile_name(p: float) -> str:
    """50.0 -> 'p50', 0.1 -> 'p0.1'."""
    return f"p{p:g}"
