"""Which sampled prompts the mirrored audit asks again, read from a real embedded store with
rows the real sampler built: only audited deployments' user prompts, never a redacted or
truncated one, each drawn once, at the audit rate."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from probes.audit_sampled import Audited, SampledPrompts
from sidecar.record import Record
from sidecar.sampler import SAMPLE_COLUMNS
from sidecar.store.client import Store
from tests.support.records import sample_values


def row(request_id: str, prompt: str, deployment: str = "fast", *, ago_s: float = 0.0) -> list[Any]:
    ts = datetime.now(UTC) - timedelta(seconds=ago_s)
    record = Record(ts=ts, request_id=request_id, route="chat", model="m", deployment=deployment)
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}]}
    return sample_values(record, json.dumps(body).encode(), "An answer.")


def collector(store: Store, rate: float = 1.0, wanted: int = 10) -> SampledPrompts:
    audited = [Audited("m", "fast", "bf16")]
    # The clock starts the audit 30 s ago: older samples are not mirrored.
    return SampledPrompts(store, audited, rate, wanted, lambda: time.time() - 30, random.Random(3))


async def test_only_prompts_that_can_be_asked_again_are_mirrored(store: Store) -> None:
    sampled = collector(store)
    rows = [
        row("plain", "What is 2 + 2?"),
        row("email", "Write to alice.smith@example.com about the 2 + 2 results."),
        row("long", "Why? " * 20_000),  # past the sampler's cap: stored truncated
        row("other", "What is 3 + 3?", deployment="elsewhere"),  # not audited
        row("old", "What is 4 + 4?", ago_s=600),  # before the audit started
    ]
    await store.insert("fathom.samples", SAMPLE_COLUMNS, rows)
    await sampled.collect()
    prompts = sampled.audited["m", "fast"].prompts
    assert [p.text for p in prompts] == ["What is 2 + 2?"]
    assert prompts[0].messages == ({"role": "user", "content": "What is 2 + 2?"},)
    assert dict(sampled.stats.skipped) == {"redacted": 1, "truncated": 1}
    await sampled.collect()  # read again within the overlap: nothing drawn twice
    assert len(sampled.audited["m", "fast"].prompts) == 1 and sampled.stats.seen == 3


async def test_prompts_are_drawn_at_the_rate_up_to_what_an_audit_wants(store: Store) -> None:
    rows = [row(f"r{i:03d}", f"Question number {i}?") for i in range(200)]
    await store.insert("fathom.samples", SAMPLE_COLUMNS, rows)
    sparse = collector(store, rate=0.25, wanted=1000)
    await sparse.collect()
    # Binomial(200, 0.25): 50 expected, sd 6.1; [30, 70] is more than 3 sd either side.
    assert 30 <= sparse.stats.mirrored <= 70
    capped = collector(store, rate=1.0, wanted=5)
    await capped.collect()
    assert len(capped.audited["m", "fast"].prompts) == 5 and capped.stats.mirrored == 5
