"""`fathom serve` as a process: admin endpoints, metrics, SIGTERM drain."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from prometheus_client import CollectorRegistry, generate_latest

from sidecar.metrics import TIME_PER_OUTPUT_CHUNK, TPOT_BUCKETS, Metrics
from sidecar.record import Record
from tests.support.processes import serve, serve_command
from tests.support.store import opened


async def test_sigterm_lets_streams_finish_then_flushes_and_exits_0(
    simulator: str, tmp_path: Path
) -> None:
    proxy = serve(simulator, tmp_path / "store", tmp_path / "spool", FATHOM_GRACE_S="10")
    body = {"model": "sim", "messages": [{"role": "user", "content": "long"}], "stream": True}
    headers = {"x-sim-tokens": "100", "x-sim-itl-ms": "15"}  # about 1.5 s of streaming
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            proxy.addresses["proxy"] + "/v1/chat/completions", json=body, headers=headers
        )
        await resp.content.readuntil(b"\n\n")
        proxy.process.send_signal(signal.SIGTERM)  # mid-stream
        await asyncio.sleep(0.3)
        async with session.get(proxy.addresses["admin"] + "/readyz") as ready:
            assert ready.status == 503  # out of the Service while draining
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(proxy.addresses["proxy"] + "/v1/models")  # no longer accepting
        rest = await resp.read()
        assert rest.rstrip().endswith(b"data: [DONE]")  # the stream in flight completed
    assert await asyncio.to_thread(proxy.process.wait, 30) == 0
    with opened(tmp_path / "store") as store:
        rows = store.query_sync("SELECT error, output_tokens FROM fathom.requests")
    assert rows == [("", 100)]


async def test_admin_endpoints_and_semconv_metrics(simulator: str, tmp_path: Path) -> None:
    proxy = serve(simulator, tmp_path / "store", tmp_path / "spool")
    try:
        async with aiohttp.ClientSession() as session:
            body = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            async with session.post(
                proxy.addresses["proxy"] + "/v1/chat/completions", json=body
            ) as r:
                await r.read()
            async with session.get(proxy.addresses["admin"] + "/healthz") as health:
                assert health.status == 200
            async with session.get(proxy.addresses["admin"] + "/metrics") as metrics:
                text = await metrics.text()
    finally:
        proxy.stop()
    for name in (
        "gen_ai_client_operation_duration_seconds_bucket",
        "gen_ai_client_token_usage_bucket",
        "gen_ai_client_operation_time_to_first_chunk_seconds_bucket",
        "gen_ai_client_operation_time_per_output_chunk_seconds_bucket",
        "gen_ai_server_time_to_first_token_seconds_bucket",
        "gen_ai_server_time_per_output_token_seconds_bucket",
        "fathom_writer_queue_rows",
    ):
        assert name in text, name
    assert 'gen_ai_token_type="output"' in text and 'le="0.005"' in text


def test_hostile_model_names_fold_into_other() -> None:
    metrics = Metrics("openai", model_label_cap=3)
    for i in range(50):
        record = Record(ts=datetime.now(UTC), request_id=str(i), route="chat",
                        model=f"model-{i}-{'x' * i}", e2e_ms=5.0)  # fmt: skip
        metrics.record(record)
    text = metrics.exposition().decode()
    models = {line.split('gen_ai_request_model="')[1].split('"')[0]
              for line in text.splitlines() if 'gen_ai_request_model="' in line}  # fmt: skip
    metrics.shutdown()
    assert models == {"model-0-", "model-1-x", "model-2-xx", "other"}


def test_chunk_gap_histogram_exports_what_the_sdk_would() -> None:
    """The per-chunk histogram skips the SDK for speed; its series must not change for that."""
    gaps = {"": [0.01, 0.02, 0.025, 0.2, 3.0], "timeout": [0.0, 0.1, 0.75]}  # edges, +Inf
    metrics = Metrics("openai", model_label_cap=8)
    reader = PrometheusMetricReader(registry=(registry := CollectorRegistry()))
    aggregation = ExplicitBucketHistogramAggregation(boundaries=TPOT_BUCKETS)
    view = View(instrument_name=TIME_PER_OUTPUT_CHUNK, aggregation=aggregation)
    provider = MeterProvider(metric_readers=[reader], views=[view])
    sdk = provider.get_meter("fathom").create_histogram(TIME_PER_OUTPUT_CHUNK, unit="s")
    for error, values in gaps.items():
        record = Record(ts=datetime.now(UTC), request_id=error, route="chat", model="m",
                        deployment="d", e2e_ms=5.0, error=error)  # fmt: skip
        metrics.record(record, values)
        attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                 "gen_ai.request.model": "m", "fathom.deployment": "d",
                 "fathom.origin": "user", "fathom.tenant": ""}  # fmt: skip
        for value in values:
            sdk.record(value, {**attrs, "error.type": error} if error else attrs)

    def series(text: bytes) -> list[str]:
        name = "gen_ai_client_operation_time_per_output_chunk"
        return sorted(line for line in text.decode().splitlines() if line.startswith(name))

    ours, theirs = series(metrics.exposition()), series(generate_latest(registry))
    metrics.shutdown()
    provider.shutdown()
    assert len(ours) == 2 * (len(TPOT_BUCKETS) + 3)
    assert ours == theirs


def test_serve_refuses_a_store_behind_and_runs_no_ddl(simulator: str, tmp_path: Path) -> None:
    """The server-store path (check only) on the real engine: exit 2, the store untouched."""
    store_path = tmp_path / "store"
    with opened(store_path) as checked:
        checked.command_sync("CREATE DATABASE fathom")  # reachable, but without Fathom's schema
    argv = serve_command(simulator, store_path)
    env = {**os.environ, "FATHOM_SCHEMA_CHECK_ONLY": "true", "FATHOM_SPOOL_DIR": str(tmp_path)}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2, done.stderr
    assert "is at schema version 0, this release needs " in done.stderr
    assert "(missing 001_init.sql, " in done.stderr
    assert "fathom schema apply" in done.stderr and "listening" not in done.stdout
    with opened(store_path) as checked:
        assert checked.query_sync("SHOW TABLES FROM fathom") == []
