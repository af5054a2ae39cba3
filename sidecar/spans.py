"""One GenAI client span per measured request, built from its finished Record.

Names follow the OpenTelemetry GenAI semantic conventions: span `{gen_ai.operation.name}
{gen_ai.request.model}`, kind CLIENT, `gen_ai.*` attributes, `error.type` and an error status
on failure. The span covers the request's own t0 to its end (the record's `ts` and `e2e_ms`),
not the moment it is built. No prompt or answer text is ever put on a span.

The span is made when the proxy hands the record on, after the client's response has ended;
the SDK's BatchSpanProcessor queues it (bounded, dropping when full) and exports from its own
thread, so the event loop only pays for building it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from sidecar.metrics import OPERATION_NAMES
from sidecar.otlp import SCOPE, otel_resource
from sidecar.record import Record
from sidecar.sampler import storable  # upstream JSON may carry lone surrogates; OTLP is UTF-8

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NS = timedelta(microseconds=1)  # datetimes hold microseconds: whole ones, then * 1000


class Spans:
    """Sends a span per finished request through `exporter`, batched off the event loop."""

    def __init__(self, exporter: SpanExporter, provider_name: str) -> None:
        self._provider = TracerProvider(resource=otel_resource())
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer(SCOPE)
        self._provider_name = provider_name
        self._root = Context()  # each request is a trace of its own

    def emit(self, record: Record) -> None:
        """The span of one finished request (measured routes only, like the metrics)."""
        operation = OPERATION_NAMES.get(record.route)
        if operation is None:
            return
        start = (record.ts - _EPOCH) // _NS * 1000
        span = self._tracer.start_span(
            f"{operation} {record.model}" if record.model else operation,
            context=self._root,
            kind=SpanKind.CLIENT,
            attributes=attributes(record, operation, self._provider_name),
            start_time=start,
        )
        if record.error:
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=start + round(record.e2e_ms * 1e6))

    def shutdown(self) -> None:
        """Export the spans still queued, then stop (the processor's own timeout applies)."""
        self._provider.shutdown()


def attributes(record: Record, operation: str, provider_name: str) -> dict[str, AttributeValue]:
    """The span attributes of `record`: GenAI conventions, then Fathom's own labels."""
    attrs: dict[str, AttributeValue] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider_name,
        "gen_ai.request.model": record.model,
        "server.address": record.upstream,
        "http.response.status_code": record.status,
        "fathom.request_id": record.request_id,
        "fathom.deployment": record.deployment,
        "fathom.origin": record.origin,
        "fathom.tenant": record.tenant,
        "fathom.stream": record.stream,
    }
    port = record.extra.get("upstream_port")
    if isinstance(port, int):
        attrs["server.port"] = port
    response_model = record.extra.get("response_model")
    if isinstance(response_model, str) and response_model:
        attrs["gen_ai.response.model"] = storable(response_model)
    if record.tokens_source != "none":
        attrs["gen_ai.usage.input_tokens"] = record.input_tokens
        attrs["gen_ai.usage.output_tokens"] = record.output_tokens
    if record.finish_reason:
        attrs["gen_ai.response.finish_reasons"] = (storable(record.finish_reason),)
    if record.ttft_ms is not None:
        attrs["gen_ai.response.time_to_first_chunk"] = record.ttft_ms / 1e3
    if record.error:
        attrs["error.type"] = record.error
    return attrs
