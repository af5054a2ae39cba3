"""What recording one streamed request's metrics costs the event loop, per gap and in all.

    .venv/bin/python bench/metrics_cost.py [--gaps 64]

Times `Metrics.record` for one streamed request with `--gaps` inter-chunk gaps, and, as the
baseline measured in the same run, the OTel SDK histogram that `ChunkGaps` replaced (the same
view and attributes) recording those gaps one by one; and what building and queueing the
request's GenAI span costs (`otlp: traces`; the exporter here discards, as the real one
exports from the BatchSpanProcessor's thread).
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Sequence
from datetime import UTC, datetime

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry

from sidecar.metrics import TIME_PER_OUTPUT_CHUNK, TPOT_BUCKETS, Metrics
from sidecar.record import Record
from sidecar.spans import Spans

ATTRS = {
    "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "m", "fathom.deployment": "d", "fathom.origin": "user",
}  # fmt: skip


def main() -> None:
    """Time both and print µs per request and per gap."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gaps", type=int, default=64)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    gaps = [0.02] * args.gaps
    record = Record(ts=datetime.now(UTC), request_id="r", route="chat", model="m",
                    deployment="d", stream=True, e2e_ms=1300.0, ttft_ms=20.0,
                    decode_tps=50.0, tokens_source="usage", output_tokens=64)  # fmt: skip
    metrics = Metrics("openai", model_label_cap=8)
    aggregation = ExplicitBucketHistogramAggregation(boundaries=TPOT_BUCKETS)
    view = View(instrument_name=TIME_PER_OUTPUT_CHUNK, aggregation=aggregation)
    reader = PrometheusMetricReader(registry=CollectorRegistry())  # as Metrics exports
    provider = MeterProvider(metric_readers=[reader], views=[view])
    sdk = provider.get_meter("fathom").create_histogram(TIME_PER_OUTPUT_CHUNK, unit="s")

    def with_sdk() -> None:
        for gap in gaps:
            sdk.record(gap, ATTRS)

    n = args.requests
    ours = min(timeit.repeat(lambda: metrics.record(record, gaps), number=n, repeat=3)) / n
    bare = min(timeit.repeat(lambda: metrics.record(record, ()), number=n, repeat=3)) / n
    theirs = min(timeit.repeat(with_sdk, number=n, repeat=3)) / n
    per_gap_ours, per_gap_sdk = (ours - bare) / args.gaps, theirs / args.gaps
    print(f"Metrics.record, one streamed request with {args.gaps} gaps: {ours * 1e6:.0f} µs "
          f"({bare * 1e6:.0f} µs without its gaps)")  # fmt: skip
    print(f"per gap: {per_gap_ours * 1e6:.2f} µs in ChunkGaps vs {per_gap_sdk * 1e6:.2f} µs "
          f"as SDK histogram records ({per_gap_sdk / per_gap_ours:.0f}x)")  # fmt: skip
    print(f"the SDK's gaps alone would hold the loop {theirs * 1e3:.2f} ms per request")
    spans = Spans(_Discard(), "openai")
    span = min(timeit.repeat(lambda: spans.emit(record), number=n, repeat=3)) / n
    print(f"Spans.emit (otlp: traces), one request: {span * 1e6:.0f} µs")
    spans.shutdown()
    metrics.shutdown()
    provider.shutdown()


class _Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


if __name__ == "__main__":
    main()
