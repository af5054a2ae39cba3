"""The seeded store of the dashboard, alert, report and check tests: rows with known shapes.

Three deployments, `NOW` fixed:
- llama-8b / fp16: stable, with noise everywhere;
- llama-8b / q2: consistency drops by ~1 sd and the canary pass rate from 0.9 to 0.6 in the
  last 6 h; TTFT triples in the last 15 minutes; faster decoding;
- qwen-7b / awq: stable quality (lower), 25 % upstream errors in the last 10 minutes.
Probe and canary traffic is written to `requests` too, so 'user traffic only' can be checked.

The report's extras (`seed_report_extras`) add a thinly measured deployment (mistral-7b /
int4), canary items whose pass rate falls (and one that rises), and regression rows in and
before the report's period (the 6 h up to NOW).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from probes.detect import REGRESSION_COLUMNS, run_detection
from sidecar.record import REQUEST_COLUMNS, Record
from sidecar.sampler import SAMPLE_COLUMNS as SAMPLER_COLUMNS
from sidecar.store.client import Store
from tests.support.records import request_values, sample_values
from tests.support.store import embedded

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
        tenant=seeded_tenant(ts) if origin == "user" else "",
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
    return request_values(record)


def seeded_tenant(ts: datetime) -> str:
    """The tenant of a seeded user request: a third of them 'acme', the rest 'globex'."""
    return "acme" if int(ts.timestamp()) % 3 == 0 else "globex"


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


def user_requests_since(
    since: datetime, tenant: str | None = None
) -> dict[tuple[str, str], int]:
    """(model, deployment) -> user requests at or after `since` (of `tenant`, when given),
    counted from the generator."""
    counts: dict[tuple[str, str], int] = {}
    for row in generate()[1]:
        named = dict(zip(REQUEST_COLUMNS, row, strict=True))
        if tenant is not None and named["tenant"] != tenant:
            continue
        if named["origin"] == "user" and named["ts"] >= since:
            key = (named["model"], named["deployment"])
            counts[key] = counts.get(key, 0) + 1
    return counts


def open_seeded(path: Path) -> Store:
    """A fresh embedded store with the schema and the seeded rows."""
    store = embedded(path)
    seed(store)
    return store


@contextlib.contextmanager
def detected(path: Path) -> Iterator[Store]:
    """`open_seeded(path)` with the detector's findings at NOW written, for a with-block."""
    store = open_seeded(path)
    try:
        asyncio.run(run_detection(store, NOW))
        yield store
    finally:
        store.close()


# ---------------------------------------------------------------------------- the report's rows


def extra_quality_rows() -> list[list[Any]]:
    """Canary items with a known history, and a thinly measured deployment."""
    rows: list[list[Any]] = []

    def canary(deployment: str, item: str, before: list[int], now: list[int]) -> None:
        for when, results in ((NOW - timedelta(hours=9), before), (NOW, now)):
            for i, ok in enumerate(results):
                ts = when - timedelta(minutes=5 * (i + 1))
                detail = json.dumps({"item": item, "i": i})
                rows.append([ts, "", "llama-8b", deployment, "factuality", item, ok, ok, detail])

    canary("q2", "capital-fr", [1] * 10, [1, 0, 0, 1, 0, 0, 1, 0, 0, 0])  # 100% -> 30%
    canary("fp16", "boiling-point", [1] * 5, [1, 1, 0, 1, 0])  # 100% -> 60%
    canary("fp16", "speed-of-light", [0] * 5, [1] * 5)  # rose: not a drop
    for i in range(3):
        ts = NOW - timedelta(minutes=10 * (i + 1))
        rows.append([ts, f"m{i}", "mistral-7b", "int4", "consistency", "", 0.5, None, "{}"])
    return rows


def extra_request_rows() -> list[list[Any]]:
    """Five user requests of the thinly measured deployment."""
    rows = []
    for i in range(5):
        record = Record(
            ts=NOW - timedelta(minutes=7 * (i + 1)), request_id=f"mistral-{i}", route="chat",
            model="mistral-7b", deployment="int4", stream=True, status=200, output_tokens=50,
            ttft_ms=100.0 + i, e2e_ms=900.0, itl_mean_ms=20.0, decode_tps=50.0,
        )  # fmt: skip
        rows.append(request_values(record))
    return rows


def regression_rows() -> list[list[Any]]:
    """Two findings in the period, one before it (left out of the report)."""
    return [
        [NOW - timedelta(hours=2), "llama-8b", "q2", "consistency", "cusum", 21.5, 0.8, 0.72,
         700, 150],
        [NOW - timedelta(hours=1), "llama-8b", "q2", "factuality", "sprt", 7.1, 0.9, 0.6, 700, 80],
        [NOW - timedelta(hours=9), "qwen-7b", "awq", "consistency", "welch", 4.0, 0.66, 0.6,
         700, 150],
    ]  # fmt: skip


def report_sample_rows() -> list[list[Any]]:
    """Three samples of the thin deployment in the period (one with a secret in its prompt,
    which the sampler redacts) and a redacted one before it (left out of the report)."""
    rows = []
    for i, (minutes, prompt) in enumerate(
        [(10, "Hi"), (20, "key sk-" + "Zx9" * 12), (30, "Hello"), (600, "key sk-" + "Qw7" * 12)]
    ):
        record = Record(ts=NOW - timedelta(minutes=minutes), request_id=f"s-{i}", route="chat",
                        model="mistral-7b", deployment="int4")  # fmt: skip
        body = json.dumps(
            {"model": "mistral-7b", "messages": [{"role": "user", "content": prompt}]}
        )
        rows.append(sample_values(record, body.encode(), "An answer."))
    return rows


def seed_report_extras(store: Store) -> None:
    """Add the report tests' rows to a seeded store."""
    store.insert_sync("fathom.samples", SAMPLER_COLUMNS, report_sample_rows())
    store.insert_sync("fathom.quality", (*QUALITY_COLUMNS, "detail"), extra_quality_rows())
    store.insert_sync("fathom.requests", REQUEST_COLUMNS, extra_request_rows())
    store.insert_sync("fathom.regressions", REGRESSION_COLUMNS, regression_rows())
