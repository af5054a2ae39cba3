"""Regression detection: the statistics by hand and by simulation, and run_detection on chDB."""

from __future__ import annotations

import dataclasses
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

from bench.detect import Scenario, canaries, item_alarms, measure, two_point
from probes.detect import (
    SHAPE,
    DetectionSettings,
    Outcome,
    Series,
    canary_drop,
    evaluate,
    run_detection,
)
from probes.statistics import (
    CusumResult,
    Reference,
    StrArray,
    baseline_rate,
    cusum_drop,
    cusum_path,
    earlier_results,
    item_llr,
    prior_weight,
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


# ------------------------------------------------------------------ per-item canary test

ITEMS = np.array([f"c{i}" for i in range(40)], dtype=np.str_)
ALWAYS_PASS = 30  # c0..c29 always passed in the baseline, c30..c39 always failed


def golden_baseline(rounds: int = 20) -> tuple[StrArray, np.ndarray]:
    """`rounds` rotations over the 40 items: 75 % pass rate, every item deterministic."""
    items = np.tile(ITEMS, rounds)
    return items, np.tile(np.arange(40) < ALWAYS_PASS, rounds)


def llr(items: list[str] | StrArray, passed: list[bool] | np.ndarray) -> np.ndarray:
    """Per-result LLRs of current results against golden_baseline() with the defaults."""
    base_items, base_passed = golden_baseline()
    return item_llr(
        base_items, base_passed, np.array(items, dtype=np.str_), np.array(passed, dtype=bool),
        S.sprt_delta, S.item_prior_min, S.item_llr_clip,
    )  # fmt: skip


def canary(items: list[str] | StrArray, passed: list[bool] | np.ndarray) -> CusumResult:
    """canary_drop against golden_baseline() with the defaults."""
    base_items, base_passed = golden_baseline()
    now_items, now_passed = np.array(items, dtype=np.str_), np.array(passed, dtype=bool)
    return canary_drop(base_items, base_passed, now_items, now_passed, S)


@given(st.lists(st.tuples(st.integers(0, 4), st.booleans()), max_size=40))
@settings(max_examples=60, deadline=None)
def test_earlier_results_counts_each_items_past(results: list[tuple[int, bool]]) -> None:
    codes = np.array([c for c, _ in results], dtype=np.intp)
    passed = np.array([ok for _, ok in results], dtype=bool)
    count, passes = earlier_results(codes, passed)
    for i, (code, _) in enumerate(results):
        before = [ok for c, ok in results[:i] if c == code]
        assert (count[i], passes[i]) == (len(before), sum(before))


def test_prior_weight_tells_items_that_differ_from_noise() -> None:
    rng = np.random.default_rng(1)
    deterministic = prior_weight(np.full(40, 20.0), np.where(np.arange(40) < 30, 20.0, 0.0))
    assert deterministic < 0.01  # trust each item's history
    counts = np.full(133, 8.0)
    alike = prior_weight(counts, rng.binomial(8, 0.8, 133).astype(float))
    assert alike > 20  # every item passes at one rate: shrink to it
    assert prior_weight(np.array([100.0]), np.array([90.0])) == pytest.approx(999)


def test_an_always_passing_item_failing_weighs_most_and_new_items_least() -> None:
    rate = 600.5 / 801  # the smoothed overall baseline rate: 75 %
    rho = S.sprt_delta / rate
    steps = llr(["c0", "c39", "c0", "new", "new", "new"], [True, False, False, False] + [False] * 2)
    assert steps[0] == pytest.approx(math.log1p(-rho))  # a pass weighs the same everywhere
    assert 0 < steps[1] < 0.01  # an item that always failed, failing: no evidence
    assert steps[2] == pytest.approx(S.item_llr_clip)  # 20/20 passes, then a failure: the clip
    # a new item starts at the overall rate, and its repeated failures soon stop counting
    assert steps[3] == pytest.approx(math.log1p(rho * rate / (1 - rate)))
    assert steps[3] > steps[4] > steps[5] and steps[5] < 0.2 * steps[3]


def test_always_passing_items_that_fail_alarm() -> None:
    items = np.tile(ITEMS, 3)
    broken = np.tile((np.arange(40) < ALWAYS_PASS) & (np.arange(40) >= 6), 3)  # c0..c5 fail
    res = canary(items, broken)
    assert res.regression and res.alarm_at is not None and res.alarm_at < 100
    # one always-passing item failing again and again counts less with each repeat: it builds
    # evidence, but alone it does not page within 40 repeats
    alone = canary(["c0"] * 40, [False] * 40)
    assert not alone.regression and alone.peak > 8


def test_noise_on_items_that_always_failed_does_not_alarm() -> None:
    rng = np.random.default_rng(4)
    items = np.tile(ITEMS, 50)
    noisy = np.where(np.arange(items.size) % 40 < ALWAYS_PASS, True, rng.random(items.size) < 0.3)
    res = canary(items, noisy)
    assert not res.regression and res.peak < 1.0
    only_failing = canary(["c35", "c36", "c37"] * 100, [False] * 300)
    assert only_failing.peak < 1.0


def test_a_new_item_that_fails_does_not_dominate() -> None:
    # every other result is one new item that fails every time: one item, however often asked
    known = [f"c{i % ALWAYS_PASS}" for i in range(300)]
    passed = [i % 2 == 1 for i in range(300)]
    res = canary([item if i % 2 else "new" for i, item in enumerate(known)], passed)
    assert not res.regression
    # the same failures spread over six items that always passed: a regression
    spread = [item if i % 2 else f"c{(i // 2) % 6}" for i, item in enumerate(known)]
    assert canary(spread, passed).regression


def test_per_item_test_meets_the_targets_on_a_short_simulation() -> None:
    """A small version of bench/detect.py's 2-point rows: a 10-point drop found within 3 rounds
    of the 133-item set; no false alarm in 200,000 stable results (a smoke check: the budget of
    0.01 per 10,000 needs the bench's longer runs to show)."""
    rng = np.random.default_rng(23)
    for rate in (0.5, 0.9):
        deployment = canaries(two_point(rate, S.sprt_delta))
        scenario = Scenario("item", "2-point", 1000, "10 pts", deployment, item_alarms(S))
        row = measure(scenario, rng, reps=60, stable=200_000, window=5000)
        assert row.median <= 3 * 133 and row.false_per_10k == 0.0


def test_evaluate_needs_enough_data() -> None:
    rng = np.random.default_rng(5)
    empty = np.empty(0, dtype=np.bool_)
    few = Series(("m", "d", "p"), rng.normal(0.8, 0.1, 63), empty, rng.normal(0.8, 0.1, 50), empty)
    assert evaluate(few, S) == []  # 64 baseline scores pin the mean to k/2 sd
    short = dataclasses.replace(few, baseline_scores=rng.normal(0.8, 0.1, 64))
    assert [o.test for o in evaluate(short, S)] == ["cusum", "welch"]
    shorter = dataclasses.replace(short, current_scores=rng.normal(0.8, 0.1, 36))
    assert [o.test for o in evaluate(shorter, S)] == ["cusum"]  # the window test needs 37
    # canaries: 42 baseline results at 0.94 are enough (23 needed); 10 at 0.5 are not (100)
    base = np.arange(42) % 17 != 0
    sharp = Series(("m", "d", "f"), base * 1.0, base, np.zeros(107), np.arange(107) % 4 == 0)
    (sprt,) = [o for o in evaluate(sharp, S) if o.test == "sprt"]
    assert sprt.regression  # 0.94 -> 0.25 over 42 vs 107 results is decided
    vague = Series(("m", "d", "f"), np.ones(10), np.arange(10) % 2 == 0, np.zeros(5), empty)
    assert evaluate(dataclasses.replace(vague, current_passed=np.zeros(5, bool)), S) == []
    passed = rng.random(400) < 0.9
    enough = Series(
        ("m", "d", "p"),
        rng.normal(0.8, 0.1, 400),
        passed,
        rng.normal(0.6, 0.1, 100),
        rng.random(100) < 0.5,
    )
    outcomes = {o.test: o for o in evaluate(enough, S)}
    assert set(outcomes) == {"cusum", "welch", "sprt"}
    assert all(o.regression for o in outcomes.values())
    assert outcomes["sprt"].baseline == pytest.approx(passed.mean())
    assert outcomes["cusum"].n_current == 100 and outcomes["cusum"].threshold == S.cusum_h
    assert outcomes["sprt"].threshold == sprt_bounds(S.sprt_alpha, S.sprt_beta)[0]  # pooled


def test_evaluate_runs_the_per_item_test_when_every_result_names_its_item() -> None:
    base_items, base_passed = golden_baseline()
    now_items = np.tile(ITEMS, 3)
    now_passed = np.tile((np.arange(40) < ALWAYS_PASS) & (np.arange(40) >= 6), 3)
    scores = np.where(base_passed, 1.0, 0.0)
    now_scores = np.where(now_passed, 1.0, 0.0)
    key = ("m", "d", "factuality")
    one = Series(key, scores, base_passed, now_scores, now_passed, base_items, now_items)
    assert one.itemised
    (sprt,) = [o for o in evaluate(one, S) if o.test == "sprt"]
    assert sprt.regression and sprt.threshold == S.item_h and sprt.statistic > S.item_h
    assert sprt.baseline == pytest.approx(0.75) and sprt.current == pytest.approx(24 / 40)
    # one result without its item id: the pooled SPRT, which a 15-point drop at 75 % misses here
    now_items[5] = ""
    pooled = dataclasses.replace(one, current_items=now_items)
    assert not pooled.itemised
    (sprt,) = [o for o in evaluate(pooled, S) if o.test == "sprt"]
    assert sprt.threshold == sprt_bounds(S.sprt_alpha, S.sprt_beta)[0] and not sprt.regression


def test_defaults_meet_the_targets_on_a_short_simulation() -> None:
    """A small version of bench/detect.py: a 0.5 sd drop found within 150 scores, no false
    alarm in 300,000 stable ones (a smoke check of the budget, see bench/detect.py)."""
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
    assert np.median(delays) < 150
    assert alarms == 0


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


def seed_quality(
    store: Store, deployment: str, drop: float, canary_now: float, scorer_now: str = ""
) -> None:
    """700 baseline and 120 current scores and canary results (by `scorer_now`)."""
    rng = random.Random(deployment)
    rows = []
    for current, count, span in ((False, 700, timedelta(days=7)), (True, 120, timedelta(hours=5))):
        end = NOW if current else NOW - S.window
        for i in range(count):
            ts = end - span * (i + 0.5) / count
            mean = 0.8 - (drop if current else 0.0)
            scorer = scorer_now if current else ""
            score = rng.gauss(mean, 0.08)
            rows.append([ts, "x", "m", deployment, "consistency", "", score, None, scorer])
            ok = int(rng.random() < (canary_now if current else 0.9))
            item = f"c{i % 20}"
            rows.append([ts, "", "m", deployment, "factuality", item, float(ok), ok, scorer])
    columns = ("ts", "request_id", "model", "deployment", "probe", "item_id", "score", "passed",
               "scorer")  # fmt: skip
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
    # canary rows came with their item ids: the per-item test ran
    assert {o.threshold for o in outcomes if o.test == "sprt"} == {S.item_h}
    # five minutes later the same regressions are not written again
    await run_detection(store, NOW + timedelta(minutes=5))
    assert len(await store.query("SELECT 1 FROM fathom.regressions")) == len(written)
    only_steady = await run_detection(store, NOW, deployment="steady", write=False)
    assert {o.key[1] for o in only_steady} == {"steady"} and not any(
        o.regression for o in only_steady
    )


async def test_a_new_scorer_starts_a_new_baseline(store: Store) -> None:
    # The same drop as "broken", but scored by an upgraded scorer: another scale, no baseline.
    seed_quality(store, "upgraded", 0.08, 0.6, scorer_now="selfcheck-emb-v2/x")
    assert await run_detection(store, NOW, deployment="upgraded", write=False) == []
    seed_quality(store, "not-upgraded", 0.08, 0.6)
    found = await run_detection(store, NOW, deployment="not-upgraded", write=False)
    assert {o.key[2] for o in found if o.regression} == {"consistency", "factuality"}


async def test_every_canary_kind_of_a_series_counts(store: Store) -> None:
    # One factuality series, two canary kinds with scorers of their own: numeric items and
    # contains items. Only the contains items fail now; detection must still see them.
    rows = []
    for current, count, span in ((False, 400, timedelta(days=7)), (True, 80, timedelta(hours=5))):
        end = NOW if current else NOW - S.window
        for i in range(count):
            ts = end - span * (i + 0.5) / count
            numeric = i % 2 == 0
            ok = int(numeric or not current)
            scorer = "exact-number/v1" if numeric else "contains/v1"
            item = f"{'n' if numeric else 'c'}{i % 10}"
            rows.append([ts, "", "m", "mixed", "factuality", item, float(ok), ok, scorer])
    columns = ("ts", "request_id", "model", "deployment", "probe", "item_id", "score", "passed",
               "scorer")  # fmt: skip
    store.insert_sync("fathom.quality", columns, rows)
    found = await run_detection(store, NOW, deployment="mixed", write=False)
    (sprt,) = [o for o in found if o.test == "sprt"]
    assert (sprt.n_baseline, sprt.n_current) == (400, 80) and sprt.regression


def test_naive_times_are_refused(tmp_path: Path) -> None:
    from probes.detect_sql import epoch_ms

    assert epoch_ms(NOW) == int(NOW.timestamp()) * 1000
    with pytest.raises(ValueError, match="naive"):
        epoch_ms(datetime(2026, 1, 1))


def test_the_shape_test_finds_answers_padded_or_cut_but_not_noise() -> None:
    rng = np.random.default_rng(9)
    base = rng.gamma(4.0, 30.0, 2000)  # answer lengths in tokens, right-skewed
    key = ("m", "d", SHAPE)
    empty = np.empty(0, dtype=np.bool_)

    def judged(now: np.ndarray) -> Outcome:
        (outcome,) = evaluate(Series(key, base, empty, now, empty), S)
        return outcome

    padded, cut = judged(3 * rng.gamma(4.0, 30.0, 40)), judged(np.full(40, 3.0))
    assert padded.regression and cut.regression and padded.test == "ks"
    assert padded.current > 2 * padded.baseline and cut.current < cut.baseline / 10
    same = judged(rng.gamma(4.0, 30.0, 5000))
    assert not same.regression
    nudged = judged(1.1 * rng.gamma(4.0, 30.0, 20_000))  # significant, and too small to matter
    assert nudged.statistic < S.shape_min_d and not nudged.regression
