"""The probe worker's counters, shared by its parts and read for metrics and health."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class WorkerStats:
    """Counters of one worker since it started (read them for metrics and health)."""

    rounds: int = 0
    samples_scored: int = 0  # samples with their quality rows written
    consistency_scored: int = 0
    skipped_budget: int = 0  # samples scored without consistency: over the probe budget
    skipped: Counter[str] = field(default_factory=Counter)  # ...for other reasons
    probe_requests: int = 0  # re-asks sent
    reasking: int = 0  # samples whose re-asks are in flight now
    canaries_sent: int = 0
    canaries_scored: int = 0
    canaries_failed: int = 0
    canary_rounds_deferred: int = 0  # over budget: tried again next round
    detections: int = 0
    regressions: int = 0
    errors: int = 0
    backoffs: int = 0

    def snapshot(self) -> WorkerStats:
        """A copy (the round's log line compares against it)."""
        return dataclasses.replace(self, skipped=Counter(self.skipped))

    def line(self, since: WorkerStats) -> str:
        """What happened since `since`, for the round's log line."""
        other = sum(self.skipped.values()) - sum(since.skipped.values())
        return (
            f"{self.samples_scored - since.samples_scored} samples scored "
            f"({self.consistency_scored - since.consistency_scored} with consistency, "
            f"{self.skipped_budget - since.skipped_budget} skipped for budget, {other} not "
            f"re-askable), {self.canaries_sent - since.canaries_sent} canaries sent "
            f"({self.canaries_failed - since.canaries_failed} failed), "
            f"{self.errors - since.errors} errors"
        )

    def busy_since(self, since: WorkerStats) -> bool:
        """Whether anything was done or went wrong since `since`."""
        return (self.samples_scored, self.canaries_sent, self.errors, self.detections) != (
            since.samples_scored, since.canaries_sent, since.errors, since.detections,
        )  # fmt: skip
