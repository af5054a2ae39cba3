"""Seeded traffic and quality rows for the dashboard and alert tests, and how Grafana runs SQL.

Three deployments, `NOW` fixed:
- llama-8b / fp16: stable, with noise everywhere;
- llama-8b / q2: consistency drops by ~1 sd and the canary pass rate from 0.9 to 0.6 in the
  last 6 h; TTFT triples in the last 15 minutes; faster decoding;
- qwen-7b / awq: stable quality (lower), 25 % upstream errors in the last 10 minutes.
Probe and canary traffic is written to `requests` too, so 'user traffic only' can be checked.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sidecar.record import REQUEST_COLUMNS, Record
from sidecar.store.client import Store, open_store
from sidecar.store.schema import apply_schema
from tests.test_dashboards_macros import QueryContext, expand

# Recent, so the tables' TTLs keep the seeded rows; whole hours keep the windows aligned.
NOW = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=1)
QUALITY_COLUMNS = ("ts", "request_id", "model", "deployment", "probe", "item_id", "score", "passed")
SAMPLE_COLUMNS = (
    "ts", "request_id", "model", "deployment", "route", "origin", "request_json", "response_text",
)  # fmt: skip
SEED = 11


@dataclass(frozen=True)
class Profile:
    """How one deployment behaves."""

    consistency: float  # baseline mean score
    consistency_now: float  # mean score in the last 6 h
    pass_rate: float
    pass_rate_now: float
    ttft_ms: float
    ttft_factor_now: float  # multiplies TTFT in the last 15 minutes
    error_rate_now: float  # in the last 10 minutes
    decode_tps: float


PROFILES = {
    ("llama-8b", "fp16"): Profile(0.80, 0.80, 0.90, 0.90, 300, 1.0, 0.01, 40),
    ("llama-8b", "q2"): Profile(0.80, 0.72, 0.90, 0.60, 250, 3.0, 0.01, 90),
    ("qwen-7b", "awq"): Profile(0.65, 0.65, 0.80, 0.80, 280, 1.0, 0.25, 60),
}
SCORE_SD = 0.08


def quality_rows(rng: random.Random) -> list[list[Any]]:
    """7 days of baseline (700 per series) and 6 h of current (150 per series) scores."""
    rows: list[list[Any]] = []
    for (model, deployment), p in PROFILES.items():
        for when, count, span in (
            (NOW - timedelta(hours=6), 700, timedelta(days=7)),
            (NOW, 150, timedelta(hours=6)),
        ):
            current = when == NOW
            for i in range(count):
                ts = when - span * (i + 0.5) / count
                mean = p.consistency_now if current else p.consistency
                score = min(1.0, max(0.0, rng.gauss(mean, SCORE_SD)))
                rows.append(
                    [ts, f"r{len(rows)}", model, deployment, "consistency", "", score, None]
                )
                rate = p.pass_rate_now if current else p.pass_rate
                ok = int(rng.random() < rate)
                rows.append([ts, "", model, deployment, "factuality", f"c{i % 40}", float(ok), ok])
    return rows


def request_rows(rng: random.Random) -> list[list[Any]]:
    """24 h of baseline and 15 minutes of current traffic per deployment, plus probe traffic."""
    rows: list[list[Any]] = []
    for (model, deployment), p in PROFILES.items():
        for when, count, span in (
            (NOW - timedelta(minutes=15), 600, timedelta(hours=24)),
            (NOW, 200, timedelta(minutes=15)),
        ):
            for i in range(count):
                ts = when - span * (i + 0.5) / count
                rows.append(_request(rng, p, model, deployment, ts, "user"))
        for i in range(100):  # probes: slow and failing, to show they are left out
            ts = NOW - timedelta(hours=6) * (i + 0.5) / 100
            rows.append(_request(rng, p, model, deployment, ts, "probe" if i % 2 else "canary"))
    return rows


def _request(
    rng: random.Random, p: Profile, model: str, deployment: str, ts: datetime, origin: str
) -> list[Any]:
    recent = ts >= NOW - timedelta(minutes=15)
    ttft = rng.lognormvariate(0, 0.3) * p.ttft_ms * (p.ttft_factor_now if recent else 1.0)
    stream = rng.random() < 0.9
    failing = rng.random() < (p.error_rate_now if ts >= NOW - timedelta(minutes=10) else 0.01)
    if origin != "user":
        ttft, failing = 50_000.0, True
    record = Record(
        ts=ts,
        request_id=f"{deployment}-{ts.timestamp()}-{origin}",
        route="chat",
        model=model,
        deployment=deployment,
        origin=origin,
        stream=stream,
        status=502 if failing else 200,
        error="upstream_http" if failing else ("client_cancelled" if rng.random() < 0.02 else ""),
        output_tokens=200,
        input_tokens=50,
        tokens_source="usage",
        ttfb_ms=ttft * 0.9,
        ttft_ms=ttft if stream else None,
        e2e_ms=ttft + 200 / p.decode_tps * 1000,
        itl_mean_ms=1000 / p.decode_tps if stream else None,
        itl_p50_ms=950 / p.decode_tps if stream else None,
        itl_p99_ms=3000 / p.decode_tps if stream else None,
        itl_max_ms=5000 / p.decode_tps if stream else None,
        decode_tps=rng.gauss(p.decode_tps, p.decode_tps * 0.1),
        chunks=200,
    )
    row = record.to_row()
    return [row[name] for name in REQUEST_COLUMNS]


def generate() -> tuple[list[list[Any]], list[list[Any]]]:
    """(quality rows, request rows), the same on every call."""
    rng = random.Random(SEED)
    quality = quality_rows(rng)
    return quality, request_rows(rng)


def sample_rows(quality: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """The stored samples behind the consistency scores of the last 6 h (samples live 7 days)."""
    rows = []
    for ts, request_id, model, deployment, probe, *_ in quality:
        if probe == "consistency" and ts >= NOW - timedelta(hours=6):
            prompt = f'{{"messages": [{{"role": "user", "content": "question {request_id}"}}]}}'
            rows.append([ts, request_id, model, deployment, "chat", "user", prompt,
                         f"answer {request_id}"])  # fmt: skip
    return rows


def seed(store: Store) -> None:
    """Write the seeded requests, quality rows and samples."""
    quality, requests = generate()
    store.insert_sync("fathom.quality", QUALITY_COLUMNS, quality)
    store.insert_sync("fathom.requests", REQUEST_COLUMNS, requests)
    store.insert_sync("fathom.samples", SAMPLE_COLUMNS, sample_rows(quality))


def user_requests_since(since: datetime) -> dict[tuple[str, str], int]:
    """(model, deployment) -> user requests at or after `since`, counted from the generator."""
    counts: dict[tuple[str, str], int] = {}
    for row in generate()[1]:
        named = dict(zip(REQUEST_COLUMNS, row, strict=True))
        if named["origin"] == "user" and named["ts"] >= since:
            key = (named["model"], named["deployment"])
            counts[key] = counts.get(key, 0) + 1
    return counts


def open_seeded(path: Path) -> Store:
    """A fresh embedded store with the schema and the seeded rows."""
    store = open_store(f"chdb://{path}")
    apply_schema(store)
    seed(store)
    return store


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """The seeded store, shared by a module's tests (one chDB engine per process)."""
    store = open_seeded(tmp_path_factory.mktemp("dash") / "db")
    try:
        yield store
    finally:
        store.close()


@dataclass(frozen=True)
class Result:
    """A query's rows with the column names and ClickHouse types the plugin would see."""

    names: tuple[str, ...]
    types: tuple[str, ...]
    rows: list[tuple[Any, ...]]

    def column(self, name: str) -> list[Any]:
        """The values of one column."""
        index = self.names.index(name)
        return [row[index] for row in self.rows]


def run_grafana_query(store: Store, sql: str, ctx: QueryContext) -> Result:
    """Expand the panel SQL as the plugin does and run it on the real engine."""
    expanded = expand(sql, ctx)
    assert "$" not in expanded, f"unexpanded macro or variable left in:\n{expanded}"
    described = store.query_sync(f"DESCRIBE ({expanded})")
    names = tuple(str(row[0]) for row in described)
    types = tuple(str(row[1]) for row in described)
    return Result(names, types, [tuple(r) for r in store.query_sync(expanded)])


def is_numeric(clickhouse_type: str) -> bool:
    """Int/UInt/Float/Decimal, possibly Nullable or LowCardinality."""
    inner = clickhouse_type.removeprefix("Nullable(").removeprefix("LowCardinality(")
    return inner.startswith(("Int", "UInt", "Float", "Decimal"))


def is_text(clickhouse_type: str) -> bool:
    """String, possibly Nullable or LowCardinality."""
    inner = clickhouse_type.removeprefix("LowCardinality(").removeprefix("Nullable(")
    return inner.startswith("String")


def test_seeded_store_holds_user_and_probe_traffic(seeded: Store) -> None:
    rows = seeded.query_sync(
        "SELECT origin, count() FROM fathom.requests GROUP BY origin ORDER BY origin"
    )
    assert dict(rows) == {"canary": 150, "probe": 150, "user": 2400}
    per_series = seeded.query_sync(
        "SELECT deployment, probe, count() FROM fathom.quality GROUP BY ALL ORDER BY ALL"
    )
    assert {count for _, _, count in per_series} == {850}


def label_set(rows: Sequence[tuple[Any, ...]], width: int) -> set[tuple[Any, ...]]:
    """The distinct first `width` values of each row."""
    return {tuple(row[:width]) for row in rows}
