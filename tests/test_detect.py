"""Regression detection: the statistics by hand and by simulation, and run_detection on chDB."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from probes.detect import (
    DetectionSettings,
    Reference,
    Series,
    baseline_rate,
    cusum_drop,
    cusum_path,
    evaluate,
    run_detection,
    sprt_alternative,
    sprt_bounds,
    sprt_drop,
    window_test,
)
from sidecar.store.client import Store, open_store
from sidecar.store.schema import apply_schema

# Recent, so the tables' TTLs keep the seeded rows; whole hours keep the windows aligned.
NOW = datetime.now(UTC).replace(minute=30, second=0, microsecond=0) - timedelta(days=1)
S = DetectionSettings()


@given(arrays(np.float64, st.integers(0, 60), elements=st.floats(-5, 5)))
@settings(max_examples=60, deadline=None)
def test_vectorised_cusum_is_pages_recursion(scores: np.ndarray) -> None:
    expected, s = [], 0.0
    for x in scores:
        s = max(0.0, s + min(2.5, max(-2.5, (0.3 - x) / 1.5)) - 0.25)
        expected.append(s)
    assert cusum_path(scores, 0.3, 1.5, 0.25, 2.5) == pytest.approx(np.array(expected), abs=1e-9)


def test_cusum_alarms_where_the_sum_passes_h() -> None:
    steady = np.full(50, 0.8)
    assert cusum_drop(steady, 0.8, 0.1, 0.25, 18.0, 2.5).alarm_at is None
    # each score 0.2 below the mean: z = 2, the sum grows by 1.75 a step, passes 18 at step 11
    dropped = np.full(20, 0.6)
    res = cusum_drop(dropped, 0.8, 0.1, 0.25, 18.0, 2.5)
    assert res.alarm_at == 10 and res.regression
    assert res.statistic == pytest.approx(20 * 1.75) and res.peak == res.statistic
    # a single catastrophic score counts as 2.5 sd at most
    one_zero = np.concatenate([np.zeros(1), np.full(30, 0.8)])
    assert cusum_drop(one_zero, 0.8, 0.1, 0.25, 18.0, 2.5).peak == pytest.approx(2.25)
    assert cusum_drop(np.empty(0), 0.8, 0.1, 0.25, 18.0, 2.5) == cusum_drop(
        np.empty(0), 0.5, 1.0, 0.25, 1.0, 2.5
    )


def test_sprt_steps_bounds_and_restarts() -> None:
    upper, lower = sprt_bounds(0.001, 0.5)
    assert upper == pytest.approx(math.log(500)) and lower == pytest.approx(math.log(0.5 / 0.999))
    fail = math.log(0.2 / 0.1)  # p0 0.9, p1 0.8: one failure adds log(0.2 / 0.1)
    res = sprt_drop(np.zeros(3, dtype=bool), 0.9, 0.1, 0.001, 0.5)
    assert res.alarm_at is None and res.llr == pytest.approx(3 * fail)
    assert sprt_drop(np.zeros(9, dtype=bool), 0.9, 0.1, 0.001, 0.5).alarm_at == 8
    # passes pull the statistic under the lower bound, which restarts the test at 0
    res = sprt_drop(np.array([True] * 6 + [False]), 0.9, 0.1, 0.001, 0.5)
    assert res.llr == pytest.approx(fail) and res.rate == pytest.approx(6 / 7)
    assert sprt_alternative(0.9, 0.1) == pytest.approx(0.8)
    assert sprt_alternative(0.12, 0.1) == pytest.approx(0.06)  # cannot drop by more than half


def test_baseline_rate_is_smoothed_and_lowered_by_its_uncertainty() -> None:
    all_passed = np.ones(100, dtype=bool)
    rate = 100.5 / 101
    assert baseline_rate(all_passed, 0.0) == pytest.approx(rate) and rate < 1
    assert baseline_rate(all_passed, 1.0) == pytest.approx(
        rate - math.sqrt(rate * (1 - rate) / 100)
    )


def test_reference_shift_and_floor() -> None:
    ref = Reference.of(np.array([0.5, 0.7, 0.9, 0.7]))
    assert ref.n == 4 and ref.mean == pytest.approx(0.7)
    mean, sd = ref.shifted(1.0, 0.02)
    assert sd == pytest.approx(ref.sd) and mean == pytest.approx(0.7 - ref.sd / 2)
    assert Reference.of(np.full(10, 1.0)).shifted(0.0, 0.02) == (1.0, 0.02)


@pytest.mark.parametrize("method", ["welch", "mannwhitney"])
def test_window_tests_find_a_drop_but_not_noise_or_trifles(method: str) -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(0.8, 0.1, 1000)
    hit = window_test(base, rng.normal(0.75, 0.1, 100), method, 0.001, 0.25)  # type: ignore[arg-type]
    assert hit.regression and hit.p_value < 1e-4 and hit.effect_sd > 0.25
    same = window_test(base, rng.normal(0.8, 0.1, 100), method, 0.001, 0.25)  # type: ignore[arg-type]
    assert not same.regression
    # 0.1 sd lower on 20,000 samples is significant, and still too small to matter
    trifle = window_test(base, rng.normal(0.79, 0.1, 20_000), method, 0.001, 0.25)  # type: ignore[arg-type]
    assert trifle.p_value < 0.001 and not trifle.regression
    constant = window_test(np.full(50, 1.0), np.full(50, 1.0), method, 0.001, 0.25)  # type: ignore[arg-type]
    assert constant.p_value == 1.0 and not constant.regression
    fell = window_test(np.full(50, 1.0), np.full(50, 0.5), method, 0.001, 0.25)  # type: ignore[arg-type]
    assert fell.regression


def test_evaluate_needs_enough_data() -> None:
    rng = np.random.default_rng(5)
    empty = np.empty(0, dtype=np.bool_)
    few = Series(("m", "d", "p"), rng.normal(0.8, 0.1, 150), empty, rng.normal(0.8, 0.1, 50), empty)
    assert evaluate(few, S) == []
    passed = rng.random(400) < 0.9
    enough = Series(
        ("m", "d", "p"),
        rng.normal(0.8, 0.1, 400),
        passed,
        rng.normal(0.6, 0.1, 60),
        rng.random(60) < 0.5,
    )
    outcomes = {o.test: o for o in evaluate(enough, S)}
    assert set(outcomes) == {"cusum", "welch", "sprt"}
    assert all(o.regression for o in outcomes.values())
    assert outcomes["sprt"].baseline == pytest.approx(passed.mean())
    assert outcomes["cusum"].n_current == 60 and outcomes["cusum"].threshold == S.cusum_h


def test_defaults_meet_the_targets_on_a_short_simulation() -> None:
    """A small version of bench/detect.py: 0.5 sd drop found fast, rare false alarms."""
    rng = np.random.default_rng(17)
    delays, alarms = [], 0
    for _ in range(60):
        mean, sd = Reference.of(rng.normal(0, 1, 1000)).shifted(S.baseline_margin_se, S.min_sd)
        res = cusum_drop(rng.normal(-0.5, 1, 1000), mean, sd, S.cusum_k, S.cusum_h, S.z_clip)
        delays.append(res.alarm_at if res.alarm_at is not None else 10**6)
        stable = rng.normal(0, 1, 5000)
        while (
            hit := cusum_drop(stable, mean, sd, S.cusum_k, S.cusum_h, S.z_clip).alarm_at
        ) is not None:
            alarms += 1
            stable = stable[hit + 1 :]
    assert np.median(delays) < 100
    assert alarms / (60 * 5000) * 10_000 < 1.0


# ------------------------------------------------------------------ on the real engine


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """An empty embedded store with the schema."""
    opened = open_store(f"chdb://{tmp_path_factory.mktemp('detect') / 'db'}")
    apply_schema(opened)
    try:
        yield opened
    finally:
        opened.close()


def seed_quality(store: Store, deployment: str, drop: float, canary_now: float) -> None:
    """700 baseline and 120 current scores and canary results for one deployment."""
    rng = random.Random(deployment)
    rows = []
    for current, count, span in ((False, 700, timedelta(days=7)), (True, 120, timedelta(hours=5))):
        end = NOW if current else NOW - S.window
        for i in range(count):
            ts = end - span * (i + 0.5) / count
            mean = 0.8 - (drop if current else 0.0)
            rows.append([ts, "x", "m", deployment, "consistency", "", rng.gauss(mean, 0.08), None])
            ok = int(rng.random() < (canary_now if current else 0.9))
            rows.append([ts, "", "m", deployment, "factuality", "c", float(ok), ok])
    columns = ("ts", "request_id", "model", "deployment", "probe", "item_id", "score", "passed")
    store.insert_sync("fathom.quality", columns, rows)


async def test_run_detection_writes_new_regressions_once(store: Store) -> None:
    seed_quality(store, "steady", 0.0, 0.9)
    seed_quality(store, "broken", 0.08, 0.6)
    outcomes = await run_detection(store, NOW)
    assert {(o.key[1], o.key[2]) for o in outcomes} == {
        (d, p) for d in ("steady", "broken") for p in ("consistency", "factuality")
    }
    written = await store.query(
        "SELECT deployment, probe, test, n_baseline, n_current FROM fathom.regressions ORDER BY ALL"
    )
    assert {(d, p, t) for d, p, t, _, _ in written} == {
        ("broken", "consistency", "cusum"),
        ("broken", "consistency", "welch"),
        ("broken", "factuality", "cusum"),
        ("broken", "factuality", "sprt"),
        ("broken", "factuality", "welch"),
    }
    assert {(n_b, n_c) for _, _, _, n_b, n_c in written} == {(700, 120)}
    # five minutes later the same regressions are not written again
    await run_detection(store, NOW + timedelta(minutes=5))
    assert len(await store.query("SELECT 1 FROM fathom.regressions")) == len(written)
    only_steady = await run_detection(store, NOW, deployment="steady", write=False)
    assert {o.key[1] for o in only_steady} == {"steady"} and not any(
        o.regression for o in only_steady
    )


def test_naive_times_are_refused(tmp_path: Path) -> None:
    from probes.detect_sql import epoch_ms

    assert epoch_ms(NOW) == int(NOW.timestamp()) * 1000
    with pytest.raises(ValueError, match="naive"):
        epoch_ms(datetime(2026, 1, 1))
