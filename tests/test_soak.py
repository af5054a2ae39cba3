"""A short soak (bench/soak.py) through real processes, with every fault: nothing is lost, every
stream completes or ends with an explicit error, memory stays flat. Plus the checks themselves,
on made-up outcomes, so that a soak cannot pass by checking nothing."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from bench.soak import (
    SALT,
    Load,
    Outcome,
    Run,
    Soak,
    Stored,
    Verdict,
    check_clients,
    check_records,
    run_soak,
)
from sidecar.proxy import _client_hash


@pytest.mark.timeout(240)
def test_short_soak_with_every_fault_loses_nothing(tmp_path: Path) -> None:
    # The worker's kill first: its successor loads its scorer (~15 s here under load) while
    # the other faults run, and the soak lasts until it has resumed.
    soak = Soak(
        seconds=16, streams=50, tokens=(30, 120), fault_rate=0.02, rss_every_s=1.0,
        worker_kill=0.1, store_outage=(0.3, 0.45), upstream_restart=0.6,
    )  # fmt: skip
    verdict = run_soak(soak, tmp_path)
    print(verdict.table())  # shown with -s, and on failure
    assert verdict.failures == [], verdict.table()
    figures = dict(verdict.rows)
    # The faults happened, and the invariants were checked on real traffic.
    assert any(name.startswith("explicit error: upstream restart") for name in figures)
    assert int(figures["completed"]) > 100
    assert int(figures["probe requests cut by the worker's kill -9"]) > 0


def outcome(n: int, kind: str, at: float, fault: str = "", status: int = 200) -> Outcome:
    """A client outcome that took one second from `at`."""
    return Outcome(n, 10, fault, at, at + 1.0, status, f"id{n}", kind)


def load_of(*outcomes: Outcome) -> Load:
    load = Load(Soak(seconds=100), time.monotonic, random.Random(0))
    load.outcomes.extend(outcomes)
    return load


def test_client_checks_fail_on_silent_ends_hangs_and_errors_outside_any_fault() -> None:
    run = Run(t0=0.0, wall_offset=0.0, windows={"upstream_restart": (50.0, 52.0)})
    load = load_of(
        outcome(1, "ok", 10.0),
        outcome(2, "cut", 51.0),  # the upstream restarted under it: allowed
        outcome(3, "error_event", 20.0, fault="error-event:3"),  # injected: allowed
        outcome(4, "truncated", 20.0),  # a body that just ended: never allowed
        outcome(5, "timeout", 30.0),  # a hang
        outcome(6, "http", 80.0, status=502),  # a 502 long after the restart
        outcome(7, "ok", 20.0, fault="reset:2"),  # an injected reset the client never saw
    )
    verdict = Verdict()
    check_clients(load, run, verdict)
    failed = " ".join(verdict.failures)
    assert "other errors: 4" in failed
    for label in ("truncated", "timeout", "other: http", "injected reset -> ok"):
        assert label in failed


def stored(out: Outcome, **changes: object) -> Stored:
    """The record the proxy should have left for `out`."""
    values = {
        "request_id": out.request_id, "client": _client_hash(SALT.encode(), out.key),
        "origin": "user", "status": 200, "error": "", "output_tokens": out.tokens, "at": out.start,
    }  # fmt: skip
    return Stored(**{**values, **changes})  # type: ignore[arg-type]


def test_record_checks_find_missing_duplicated_phantom_and_disagreeing_records() -> None:
    a, b, c, d = (outcome(n, "ok", 1.0) for n in range(1, 5))
    refused = outcome(5, "refused", 1.0, status=0)
    rows = [
        stored(a),
        stored(b), stored(b, request_id="other"),  # b stored twice
        stored(c, error="stream_error"),  # c completed, yet the record says it failed
        # d missing; a record nobody sent; one for a request that was refused
        stored(outcome(99, "ok", 1.0)), stored(refused),
    ]  # fmt: skip
    verdict = Verdict()
    check_records(load_of(a, b, c, d, refused), rows, verdict)
    failed = "\n".join(verdict.failures)
    for expected in (
        "records missing: 1", "records duplicated: 1", "records no client sent: 1",
        "records disagreeing with the client: 2",
    ):  # fmt: skip
        assert expected in failed, failed
    clean = Verdict()
    check_records(load_of(a, refused), [stored(a)], clean)
    assert clean.failures == []
