"""Rows as the proxy would store them: request records and sampled answers, with defaults."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from sidecar.record import REQUEST_COLUMNS, Record
from sidecar.sampler import SAMPLE_COLUMNS, Sampler
from sidecar.store.client import Store
from sidecar.wire import parse_answer

PROMPT = "Tell me about topic {i} please."


def request_row(i: int, prefix: str = "r") -> dict[str, Any]:
    """A distinct `fathom.requests` row (column -> value): id `{prefix}{i:06d}`, i ms ago."""
    ts = datetime.now(UTC) - timedelta(milliseconds=i)
    record = Record(ts=ts, request_id=f"{prefix}{i:06d}", route="chat", model="m", ttft_ms=i / 8)
    return record.to_row()


def request_values(record: Record) -> list[Any]:
    """A record's `fathom.requests` row as values in REQUEST_COLUMNS order."""
    row = record.to_row()
    return [row[c] for c in REQUEST_COLUMNS]


def sample_values(record: Record, request_body: bytes, answer: str) -> list[Any]:
    """The `fathom.samples` row the sampler makes of a request, in SAMPLE_COLUMNS order."""
    row = Sampler().row(record, request_body, answer)
    return [row[c] for c in SAMPLE_COLUMNS]


async def real_sample(
    session: aiohttp.ClientSession,
    base: str,
    request_id: str,
    body: Mapping[str, Any],
    deployment: str,
    headers: Mapping[str, str] | None = None,
) -> list[Any]:
    """Ask an upstream a real chat request; its `fathom.samples` row, built by the sampler."""
    raw = json.dumps(body).encode()
    async with session.post(base + "/v1/chat/completions", data=raw, headers=headers) as resp:
        answer = parse_answer(await resp.read())
    record = Record(
        ts=datetime.now(UTC), request_id=request_id, route="chat", model=str(body["model"]),
        deployment=deployment, finish_reason=answer.finish_reason,
    )  # fmt: skip
    return sample_values(record, raw, answer.text)


async def seed_samples(
    store: Store,
    base: str,
    model: str,
    count: int,
    *,
    prefix: str = "",
    deployment: str = "d1",
    max_tokens: int | None = 64,
    headers: Mapping[str, str] | None = None,
) -> list[str]:
    """`count` samples of `model` (ids `{prefix}{model}-{i:03d}`), one real request each with a
    distinct prompt; their request ids."""
    cap = {} if max_tokens is None else {"max_tokens": max_tokens}
    async with aiohttp.ClientSession() as session:
        rows = await asyncio.gather(*(
            real_sample(session, base, f"{prefix}{model}-{i:03d}", {
                "model": model, "messages": [{"role": "user", "content": PROMPT.format(i=i)}],
                **cap,
            }, deployment, headers)
            for i in range(count)
        ))  # fmt: skip
    await store.insert("fathom.samples", SAMPLE_COLUMNS, rows)
    return [str(row[1]) for row in rows]
