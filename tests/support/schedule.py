"""Checking a stored time against the schedule the simulator was told to keep."""

from __future__ import annotations

SLACK_MS = 400  # a loaded 2-core machine: late is possible, early is not


def near(measured: float | None, due_ms: float) -> bool:
    """Measured no earlier than the simulator sent it (less a clock tick), and not much later."""
    return measured is not None and due_ms - 5 <= measured <= due_ms + SLACK_MS
