"""A process's telemetry from its settings: the metrics (Prometheus, and OTLP when asked) and,
when asked, a GenAI span per request; OTLP destinations come from the OTEL_* variables in
`env`, which the SDK's exporters read too."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from sidecar import otlp
from sidecar.metrics import Metrics, MetricsSettings
from sidecar.spans import Spans


def telemetry(settings: MetricsSettings, env: Mapping[str, str]) -> tuple[Metrics, Spans | None]:
    """Metrics for every process; Spans only with `otlp: traces|all`."""
    exporter = otlp.metric_exporter(env) if settings.otlp_metrics else None
    metrics = Metrics(settings.provider, settings.model_label_cap, exporter)
    spans = Spans(otlp.span_exporter(env), settings.provider) if settings.otlp_traces else None
    return metrics, spans


async def shut_down(metrics: Metrics, spans: Spans | None) -> None:
    """Send what is left and stop, both at once and off the loop: with the receiver down,
    each last export may wait out OTEL_EXPORTER_OTLP_TIMEOUT."""
    parts = [metrics.shutdown, *([spans.shutdown] if spans is not None else [])]
    await asyncio.gather(*(asyncio.to_thread(part) for part in parts))
