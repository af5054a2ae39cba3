"""One /metrics for `fathom serve --workers N`: the workers' expositions merged into one.

Each proxy process keeps its own registry (sidecar.metrics, ChunkGaps included) and serves it
on a private socket; the parent scrapes them all and adds them up, series by series (same name,
same labels). Counters and histograms (buckets, counts, sums) are summed: each request was
counted by exactly one process. Gauges are summed too (rows queued, bytes spooled, and the
bounds of each worker's queue and spool, so that a ratio of the two still means "how full"),
except `*_up` gauges and `target_info`, which take the minimum: the store is up only when
every worker's writer reaches it. `_created` timestamps take the earliest.
A `fathom_worker_requests_total{worker="i"}` family says how many requests each worker
measured, so that an uneven spread shows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

REQUESTS = "gen_ai_client_operation_duration_seconds_count"  # one per measured request
PER_WORKER = "fathom_worker_requests"

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(slots=True)
class _Family:
    """One metric family as merged so far."""

    name: str
    documentation: str
    typ: str
    unit: str
    values: dict[SeriesKey, float] = field(default_factory=dict)


def _by_minimum(family: str, typ: str, sample: str) -> bool:
    """Whether a series is merged by its minimum rather than by its sum."""
    if sample.endswith("_created"):
        return True
    return typ in ("gauge", "info") and (family.endswith("_up") or family == "target_info")


def merge(expositions: Sequence[str]) -> bytes:
    """The Prometheus text exposition of the workers' expositions (worker i = index i) added
    up, with the per-worker request counts."""
    families: dict[str, _Family] = {}
    per_worker = Metric(PER_WORKER, "requests measured by each worker process", "counter")
    for index, text in enumerate(expositions):
        requests = 0.0
        for parsed in text_string_to_metric_families(text):
            merged = families.setdefault(
                parsed.name, _Family(parsed.name, parsed.documentation, parsed.type, parsed.unit)
            )
            for sample in parsed.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if sample.name == REQUESTS:
                    requests += sample.value
                if key not in merged.values:
                    merged.values[key] = sample.value
                elif _by_minimum(parsed.name, parsed.type, sample.name):
                    merged.values[key] = min(merged.values[key], sample.value)
                else:
                    merged.values[key] += sample.value
        per_worker.add_sample(f"{PER_WORKER}_total", {"worker": str(index)}, requests)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged([*map(_metric, families.values()), per_worker]))
    return generate_latest(registry)


def _metric(family: _Family) -> Metric:
    metric = Metric(family.name, family.documentation, family.typ, family.unit)
    for (name, labels), value in family.values.items():
        metric.add_sample(name, dict(labels), value)
    return metric


class _Merged(Collector):
    """Hands generate_latest the merged families."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)
