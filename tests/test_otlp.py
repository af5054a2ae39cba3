"""OTLP export: `fathom serve` pushes its metrics and GenAI spans to a real OTLP receiver, over
HTTP and gRPC, only when asked."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC
from pathlib import Path
from typing import Any

import openai
import pytest
from yarl import URL

from fathom import spawn
from sidecar.config import ConfigError
from sidecar.metrics import TIME_PER_OUTPUT_CHUNK, TPOT_BUCKETS, ChunkGaps, MetricsSettings
from sidecar.otlp import protocol
from tests.support.otlp import Received, attrs, grpc_receiver, http_receiver
from tests.support.polling import until
from tests.support.processes import serve, serve_command
from tests.support.store import opened

# The conftest simulator: model 'sim', 30 ms TTFT, 10 ms ITL, 8 tokens; the failed request
# gets an HTTP 503 from it.
STREAMS, PLAIN, FAILED = 3, 1, 1
GAPS_PER_STREAM = 8 - 1  # 8 content events, a gap between each two


def _env(endpoint: str, proto: str, otlp: str = "all") -> dict[str, str]:
    return {
        "FATHOM_OTLP": otlp,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": proto,
        "OTEL_METRIC_EXPORT_INTERVAL": "200",  # ms
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms
    }


async def _traffic(proxy_url: str) -> None:
    client = openai.AsyncOpenAI(base_url=proxy_url + "/v1", api_key="sk-otlp", max_retries=0)
    messages: Any = [{"role": "user", "content": "hi"}]
    for _ in range(STREAMS):
        stream = await client.chat.completions.create(model="sim", messages=messages, stream=True)
        async for _chunk in stream:
            pass
    for _ in range(PLAIN):
        await client.chat.completions.create(model="sim", messages=messages)
    for _ in range(FAILED):
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(
                model="sim", messages=messages, extra_headers={"x-sim-fault": "http-503"}
            )
    await client.close()


def _seen(received: Received, proxy: Any) -> str:
    points = [attrs(p.attributes) for p in received.histogram("gen_ai.client.operation.duration")]
    tail = "\n".join(list(proxy.output)[-15:])
    return f"{len(received.metrics)} metric exports, durations {points}; serve said:\n{tail}"


def _count(received: Received, name: str, **want: str) -> int:
    points = received.histogram(name)
    return sum(p.count for p in points if want.items() <= attrs(p.attributes).items())


@pytest.mark.parametrize("proto", ["http/protobuf", "grpc"])
async def test_serve_exports_metrics_and_genai_spans(
    simulator: str, tmp_path: Path, proto: str
) -> None:
    receiver = http_receiver() if proto == "http/protobuf" else grpc_receiver()
    async with receiver as (endpoint, received):
        env = _env(endpoint, proto)
        proxy = serve(simulator, tmp_path / "store", tmp_path / "spool", **env)
        try:
            await _traffic(proxy.addresses["proxy"])
            total = STREAMS + PLAIN + FAILED
            labels = {"gen_ai.request.model": "sim", "fathom.deployment": "default"}
            duration = "gen_ai.client.operation.duration"
            await until(
                lambda: _count(received, duration, **labels) == total,
                what=lambda: _seen(received, proxy),
            )
            await until(lambda: len(received.spans()) == total, what="all spans")
        finally:
            assert await asyncio.to_thread(proxy.stop) == 0
    with opened(tmp_path / "store") as store:
        rows = store.query_sync(
            "SELECT request_id, ts, ttft_ms, e2e_ms, output_tokens FROM fathom.requests"
        )
    assert len(rows) == total
    _check_metrics(received, labels)
    _check_spans(received, {row[0]: row[1:] for row in rows}, URL(simulator))


def _check_metrics(received: Received, labels: dict[str, str]) -> None:
    tokens = "gen_ai.client.token.usage"
    assert _count(received, tokens, **labels, **{"gen_ai.token.type": "output"}) == STREAMS + PLAIN
    first_chunk = "gen_ai.client.operation.time_to_first_chunk"
    assert _count(received, first_chunk, **labels) == STREAMS  # streams only
    # Aggregated outside the SDK, and still exported: a gap per pair of content events.
    assert _count(received, TIME_PER_OUTPUT_CHUNK, **labels) == STREAMS * GAPS_PER_STREAM
    (gaps,) = received.histogram(TIME_PER_OUTPUT_CHUNK)
    assert 0 <= gaps.min <= gaps.max < 0.5
    # the simulator's 10 ms ITL, loosely: about 10 ms a gap
    assert 0.5 * 0.010 * gaps.count < gaps.sum < 2 * 0.010 * gaps.count
    assert list(gaps.explicit_bounds) == list(TPOT_BUCKETS)
    assert "fathom.writer.queue_rows" in received.names()  # gauges go out too
    assert "fathom.requests.errors" in received.names()


def _check_spans(received: Received, rows: dict[str, tuple[Any, ...]], upstream: URL) -> None:
    for span in received.spans():
        got = attrs(span.attributes)
        ts, ttft_ms, e2e_ms, output_tokens = rows[got["fathom.request_id"]]
        assert span.name == "chat sim"
        assert span.kind == span.SPAN_KIND_CLIENT
        assert got["gen_ai.operation.name"] == "chat"
        assert got["gen_ai.request.model"] == "sim"
        assert (got["server.address"], got["server.port"]) == (upstream.host, upstream.port)
        if got["http.response.status_code"] == 503:
            assert got["error.type"] == "upstream_http"
            assert span.status.code == span.status.STATUS_CODE_ERROR
            assert "gen_ai.usage.output_tokens" not in got
            continue
        assert got["gen_ai.response.model"] == "sim"
        assert got["gen_ai.usage.output_tokens"] == output_tokens == 8
        assert got["gen_ai.usage.input_tokens"] > 0
        assert got["gen_ai.response.finish_reasons"] == ["stop"]
        assert "error.type" not in got and span.status.code == span.status.STATUS_CODE_UNSET
        # The span is the request's own time, not when it was sent: start at ts (stored to
        # the ms), lasting e2e.
        start_ms = span.start_time_unix_nano / 1e6
        assert abs(start_ms - ts.replace(tzinfo=UTC).timestamp() * 1e3) < 1.5
        assert abs((span.end_time_unix_nano - span.start_time_unix_nano) / 1e6 - e2e_ms) < 0.01
        if ttft_ms is None:
            assert "gen_ai.response.time_to_first_chunk" not in got
        else:
            assert abs(got["gen_ai.response.time_to_first_chunk"] * 1e3 - ttft_ms) < 1
            assert 25 < ttft_ms < e2e_ms  # the simulator's 30 ms TTFT
        assert not any("content" in key or "message" in key for key in got)  # no text
    assert len({span.trace_id for span in received.spans()}) == len(received.spans())
    errors = [attrs(s.attributes).get("error.type") for s in received.spans()]
    assert errors.count("upstream_http") == FAILED


async def test_nothing_is_sent_when_otlp_is_off(simulator: str, tmp_path: Path) -> None:
    async with http_receiver() as (endpoint, received):
        env = _env(endpoint, "http/protobuf", otlp="off")
        proxy = serve(simulator, "none", tmp_path / "spool", **env)
        try:
            await _traffic(proxy.addresses["proxy"])
        finally:
            # A stop exports what an enabled exporter still holds: after it, nothing can come.
            assert await asyncio.to_thread(proxy.stop) == 0
    assert received.metrics == [] and received.traces == []


@pytest.mark.parametrize("proto", ["http/protobuf", "grpc"])
async def test_a_receiver_that_is_down_slows_neither_traffic_nor_stop(
    simulator: str, tmp_path: Path, proto: str
) -> None:
    nobody = f"http://127.0.0.1:{spawn.free_port()}"
    env = {**_env(nobody, proto), "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}  # s
    proxy = serve(simulator, "none", tmp_path / "spool", **env)
    try:
        await _traffic(proxy.addresses["proxy"])  # answered while the exports fail
    finally:
        started = time.monotonic()
        assert await asyncio.to_thread(proxy.stop) == 0
    # The last exports give up after OTEL_EXPORTER_OTLP_TIMEOUT, both at once (default: 10 s).
    assert time.monotonic() - started < 6


def test_serve_refuses_a_protocol_it_cannot_export(simulator: str, tmp_path: Path) -> None:
    env = {**os.environ, "FATHOM_OTLP": "metrics", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
    argv = serve_command(simulator, "none")
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "OTEL_EXPORTER_OTLP_PROTOCOL='http/json'" in done.stderr + done.stdout


def test_protocol_follows_the_signal_variable_then_the_general_one() -> None:
    assert protocol("metrics", {}) == "http/protobuf"  # the specification's default
    assert protocol("metrics", {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == "grpc"
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
    }
    assert (protocol("traces", env), protocol("metrics", env)) == ("http/protobuf", "grpc")
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"):
        protocol("metrics", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    with pytest.raises(ConfigError, match="FATHOM_OTLP"):
        MetricsSettings(otlp="yes")


def test_chunk_gaps_hand_otlp_the_bins_they_hold() -> None:
    gaps = ChunkGaps(TIME_PER_OUTPUT_CHUNK, TPOT_BUCKETS, clock=iter([1000, 3000, 5000]).__next__)
    assert gaps.points() == []
    gaps.record([0.005, 0.02, 3.0], {"a": "1"})
    (metric,) = gaps.points()
    (point,) = metric.data.data_points  # type: ignore[union-attr]
    # bounds 0.01, 0.025, ...: 0.005 in the first bucket, 0.02 in the second, 3.0 past 2.5
    assert list(point.bucket_counts) == [1, 1] + [0] * 11 + [1]
    assert (point.count, point.min, point.max) == (3, 0.005, 3.0)
    assert point.sum == pytest.approx(3.025)
    assert (point.start_time_unix_nano, point.time_unix_nano) == (1000, 5000)
    assert dict(point.attributes) == {"a": "1"}


def test_each_process_pushes_as_its_own_instance() -> None:
    # `serve --workers N`: N processes push cumulative series; one identity would merge them.
    # The SDK gives each process its own service.instance.id: hold it to that.
    code = "from sidecar.otlp import otel_resource; "
    code += "print(otel_resource().attributes['service.instance.id'])"
    argv = [sys.executable, "-c", code]
    ids = {subprocess.run(argv, capture_output=True, text=True, check=True).stdout for _ in "ab"}
    assert len(ids) == 2 and all(i.strip() for i in ids)
