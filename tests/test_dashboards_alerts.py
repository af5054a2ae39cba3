"""The alert rules: each rule's query runs on the real engine with the plugin's macros, its
reduce and threshold expressions are applied as Grafana's server-side expressions do, and the
rules fire on the seeded regressions and stay quiet on stable, noisy data. The quality rules
compute exactly what probes.detect computes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from probes.detect import SHAPE, DetectionSettings, load_series
from probes.statistics import Reference, baseline_rate, cusum_drop, sprt_drop
from sidecar.record import REQUEST_COLUMNS, Record
from sidecar.store.client import Store
from tests.support.grafana_alerts import (
    EXPRESSIONS,
    RULES_FILE,
    firing,
    named,
    query_instances,
    rules,
)
from tests.support.grafana_queries import ALL, QueryContext, Variable, run_query
from tests.support.records import request_values
from tests.support.seeded import NOW, SAMPLE_COLUMNS, detected

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"
VARIABLES = ("model", "deployment", "probe", "origin", "route", "scorer")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """Seeded store with the detector's findings at NOW."""
    with detected(tmp_path_factory.mktemp("alerts") / "db") as seeded:
        yield seeded


def test_rules_are_well_formed() -> None:
    document = yaml.safe_load(RULES_FILE.read_text())
    uids = [rule["uid"] for group in document["groups"] for rule in group["rules"]]
    assert len(uids) == len(set(uids)) == 8
    for group in document["groups"]:
        assert group["folder"] == "Fathom" and group["interval"]
        for rule in group["rules"]:
            refs = {query["refId"] for query in rule["data"]}
            assert rule["condition"] in refs
            for query in rule["data"]:
                assert query["model"]["refId"] == query["refId"]
                if query["datasourceUid"] == EXPRESSIONS:
                    assert query["model"]["expression"] in refs
                else:
                    assert query["datasourceUid"] == "fathom-clickhouse"
            assert "$" not in "".join(rule["labels"].values()), "labels are env-interpolated"
            assert rule["noDataState"] in {"OK", "NoData", "Alerting", "KeepLast"}


def test_rules_load_with_the_grafana_foundation_sdk() -> None:
    from grafana_foundation_sdk.models.alerting import Rule

    for group in yaml.safe_load(RULES_FILE.read_text())["groups"]:
        for rule in group["rules"]:
            api = {**rule, "folderUID": "fathom", "ruleGroup": group["name"], "orgID": 1}
            model = Rule.from_json(api)
            assert model.title == rule["title"] and model.condition == rule["condition"]
            assert len(model.data) == len(rule["data"])


SERIES = ("model", "deployment", "probe")
DEPLOYMENT = ("model", "deployment")
EXPECTED = {
    "fathom-quality-regression": (
        SERIES,
        {("llama-8b", "q2", "consistency"), ("llama-8b", "q2", "factuality")},
    ),
    "fathom-canary-pass-rate": (SERIES, {("llama-8b", "q2", "factuality")}),
    "fathom-ttft-p95": (DEPLOYMENT, {("llama-8b", "q2")}),
    "fathom-error-rate": (DEPLOYMENT, {("qwen-7b", "awq")}),
}


@pytest.mark.parametrize("uid", sorted(EXPECTED))
def test_rules_fire_on_the_seeded_regression_only(store: Store, uid: str) -> None:
    keys, expected = EXPECTED[uid]
    rule = rules()[uid]
    evaluated = query_instances(store, rule["data"][0], NOW)
    # the stable deployments were evaluated too (they have a value), and stayed quiet
    assert {dict(labels)["deployment"] for labels in evaluated} >= {"fp16", "awq"}
    assert named(firing(store, rule, NOW), *keys) == expected


def test_detector_finding_rule_fires_for_what_the_detector_wrote(store: Store) -> None:
    fired = firing(store, rules()["fathom-detector-finding"], NOW)
    assert named(fired, "deployment") == {("q2",)}
    assert {"cusum", "sprt", "welch"} <= {dict(f)["test"] for f in fired}


@pytest.mark.parametrize(
    ("uid", "instances"), [("fathom-quality-regression", 6), ("fathom-canary-pass-rate", 3)]
)
def test_quality_rules_stay_quiet_before_the_change(store: Store, uid: str, instances: int) -> None:
    before = NOW - timedelta(hours=6, minutes=1)  # both windows hold stable, noisy scores only
    rule = rules()[uid]
    assert len(query_instances(store, rule["data"][0], before)) == instances
    assert firing(store, rule, before) == set()
    assert firing(store, rules()["fathom-detector-finding"], before) == set()


def test_sql_statistics_are_the_detectors(store: Store) -> None:
    settings = DetectionSettings()
    rule = rules()["fathom-quality-regression"]
    threshold_value = rule["data"][2]["model"]["conditions"][0]["evaluator"]["params"][0]
    window = rule["data"][0]["relativeTimeRange"]["from"]
    assert threshold_value == settings.cusum_h
    assert window == (settings.window + settings.baseline).total_seconds()
    cusum_sql = query_instances(store, rule["data"][0], NOW)
    sprt_sql = query_instances(store, rules()["fathom-canary-pass-rate"]["data"][0], NOW)
    series = [s for s in asyncio.run(load_series(store, NOW, settings)) if s.key[2] != SHAPE]
    assert len(cusum_sql) == len(series) == 6
    for one in series:
        # every seeded row has the default scorer, ""; series are per scorer in SQL too
        labels = (*zip(("model", "deployment", "probe"), one.key, strict=True), ("scorer", ""))
        mean, sd = Reference.of(one.baseline_scores).shifted(
            settings.baseline_margin_se, settings.min_sd
        )
        k, h, clip = settings.cusum_k, settings.cusum_h, settings.z_clip
        expected = cusum_drop(one.current_scores, mean, sd, k, h, clip).statistic
        assert cusum_sql[labels] == pytest.approx(expected, rel=1e-9, abs=1e-9)
        if one.baseline_passed.size:
            p0 = baseline_rate(one.baseline_passed, settings.baseline_margin_se)
            hit = sprt_drop(
                one.current_passed, p0, settings.sprt_delta, settings.sprt_alpha, settings.sprt_beta
            )
            assert sprt_sql[labels] == int(hit.regression)


# ------------------------------------------------------------------ isolated scenarios
# Each scenario writes its rows days after NOW and is evaluated there, so the seeded
# regression the tests above read is untouched.


def quality_row(
    ts: datetime, series: tuple[str, str, str], passed: int | None, **extra: Any
) -> dict[str, Any]:
    """A fathom.quality row for the scenarios."""
    model, deployment, probe = series
    score = float(passed) if passed is not None else extra.pop("score")
    return {"ts": ts, "request_id": extra.pop("request_id", ""), "model": model,
            "deployment": deployment, "probe": probe, "item_id": extra.pop("item_id", ""),
            "score": score, "passed": passed, "scorer": extra.pop("scorer", "")}  # fmt: skip


def insert_quality(store: Store, rows: list[dict[str, Any]]) -> None:
    """Write scenario rows to fathom.quality."""
    columns = tuple(rows[0])
    store.insert_sync("fathom.quality", columns, [[row[c] for c in columns] for row in rows])


def spread(end: datetime, span: timedelta, count: int) -> list[datetime]:
    """`count` times evenly over (end - span, end)."""
    return [end - span * (i + 0.5) / count for i in range(count)]


def test_canary_rule_and_panel_leave_degeneration_results_out(store: Store) -> None:
    at = NOW + timedelta(days=10)
    series = ("mistral-7b", "int4")
    cut = at - timedelta(hours=6)
    rows = [quality_row(ts, (*series, "factuality"), 1, item_id="c1")
            for ts in spread(cut, timedelta(days=7), 300)]  # fmt: skip
    rows += [quality_row(ts, (*series, "factuality"), 1, item_id="c1")
             for ts in spread(at, timedelta(hours=6), 30)]  # fmt: skip
    # degeneration scores sampled user answers: passed is set, but these are no canaries
    rows += [quality_row(ts, (*series, "degeneration"), 1, request_id=f"b{i}")
             for i, ts in enumerate(spread(cut, timedelta(days=7), 300))]  # fmt: skip
    rows += [quality_row(ts, (*series, "degeneration"), 0, request_id=f"n{i}")
             for i, ts in enumerate(spread(at, timedelta(hours=6), 60))]  # fmt: skip
    insert_quality(store, rows)
    rule = rules()["fathom-canary-pass-rate"]
    assert named(set(query_instances(store, rule["data"][0], at)), "probe") == {("factuality",)}
    assert firing(store, rule, at) == set()


def test_quality_rules_leave_reference_audits_out(store: Store) -> None:
    """An audit row's score is a p-value and its `passed` a test's verdict: neither is a
    quality score for CUSUM nor a canary for the pass-rate test."""
    at = NOW + timedelta(days=15)
    audit = ("mistral-7b", "fp8", "audit-canary")
    cut = at - timedelta(hours=6)
    rows = [quality_row(ts, audit, 1, item_id="vs:bf16", score=0.9)
            for ts in spread(cut, timedelta(days=7), 300)]  # fmt: skip
    rows += [quality_row(ts, audit, 0, item_id="vs:bf16", score=0.001)
             for ts in spread(at, timedelta(hours=6), 30)]  # fmt: skip
    insert_quality(store, rows)
    for uid in ("fathom-quality-regression", "fathom-canary-pass-rate"):
        rule = rules()[uid]
        assert not query_instances(store, rule["data"][0], at), uid
        assert firing(store, rule, at) == set(), uid


def test_cusum_panel_is_per_scorer_like_its_rule(store: Store) -> None:
    at = NOW + timedelta(days=20)
    series = ("phi-3", "fp8", "consistency")
    cut = at - timedelta(hours=6)
    rows = []
    for scorer, now_mean in (("minilm/1", 0.8), ("minilm/2", 0.5)):
        rows += [quality_row(ts, series, None, score=0.8 + 0.05 * (i % 3 - 1), scorer=scorer)
                 for i, ts in enumerate(spread(cut, timedelta(days=7), 300))]  # fmt: skip
        rows += [quality_row(ts, series, None, score=now_mean + 0.05 * (i % 3 - 1), scorer=scorer)
                 for i, ts in enumerate(spread(at, timedelta(hours=6), 30))]  # fmt: skip
    insert_quality(store, rows)
    rule = rules()["fathom-quality-regression"]
    instances = {
        dict(labels)["scorer"]: v
        for labels, v in query_instances(store, rule["data"][0], at).items()
    }
    dashboard = json.loads((DASHBOARDS / "fathom-quality.json").read_text())
    panel = next(p for p in dashboard["panels"] if p["title"] == "Detector now (CUSUM)")
    variables = {name: Variable(name, [ALL], [""]) for name in VARIABLES}
    ctx = QueryContext(at - timedelta(hours=6), at, timedelta(seconds=30), variables)
    table = run_query(store, panel["targets"][0]["rawSql"], ctx)
    shown = dict(zip(table.column("scorer"), table.column("cusum"), strict=True))
    assert set(shown) == set(instances) == {"minilm/1", "minilm/2"}
    assert all(shown[s] == pytest.approx(instances[s], abs=0.01) for s in shown)
    assert shown["minilm/2"] > 16 > shown["minilm/1"]


def user_request(ts: datetime, model: str, deployment: str) -> list[Any]:
    """A fathom.requests row of one answered user request."""
    record = Record(ts=ts, request_id=f"{deployment}-{ts.timestamp()}", route="chat", model=model,
                    deployment=deployment, origin="user", e2e_ms=100.0)  # fmt: skip
    return request_values(record)


def test_a_deployment_that_stops_serving_raises_an_alert(store: Store) -> None:
    at = NOW + timedelta(days=30)
    day, quiet = timedelta(hours=24), timedelta(minutes=15)
    rows = [user_request(ts, "gemma-9b", "steady") for ts in spread(at, day, 2000)]
    rows += [user_request(ts, "gemma-9b", "stopped") for ts in spread(at - quiet, day, 2000)]
    # a few requests a day: a quiet quarter of an hour is normal there
    rows += [user_request(ts, "gemma-9b", "sparse") for ts in spread(at - quiet, day, 40)]
    store.insert_sync("fathom.requests", REQUEST_COLUMNS, rows)
    rule = rules()["fathom-traffic-stopped"]
    evaluated = query_instances(store, rule["data"][0], at)
    assert named(set(evaluated), "deployment") == {("steady",), ("stopped",)}
    assert named(firing(store, rule, at), "deployment") == {("stopped",)}
    assert firing(store, rule, at - quiet) == set()  # while it still served


def test_samples_left_unscored_raise_the_probe_worker_alert(store: Store) -> None:
    at = NOW + timedelta(days=40)
    window = spread(at - timedelta(minutes=10), timedelta(minutes=20), 30)
    samples = []
    for deployment in ("scored", "unscored"):
        samples += [[ts, f"{deployment}{i}", "olmo-7b", deployment, "chat", "user", "{}", "a"]
                    for i, ts in enumerate(window)]  # fmt: skip
    store.insert_sync("fathom.samples", SAMPLE_COLUMNS, samples)
    # the worker writes each score with its sample's timestamp
    scored = [quality_row(ts, ("olmo-7b", "scored", "degeneration"), 1, request_id=f"scored{i}")
              for i, ts in enumerate(window)]  # fmt: skip
    insert_quality(store, scored)
    rule = rules()["fathom-probe-worker-down"]
    assert named(set(query_instances(store, rule["data"][0], at)), "deployment") == {
        ("scored",), ("unscored",),
    }  # fmt: skip
    assert named(firing(store, rule, at), "deployment") == {("unscored",)}


def test_canaries_that_stop_raise_an_alert(store: Store) -> None:
    at = NOW + timedelta(days=50)
    rows = []
    for deployment, last in (("live", at), ("silent", at - timedelta(minutes=40))):
        rounds = [last - timedelta(minutes=5) * i for i in range(1, 200)]
        rows += [quality_row(ts, ("yi-6b", deployment, "factuality"), 1, item_id="c1")
                 for ts in rounds]  # fmt: skip
    insert_quality(store, rows)
    rule = rules()["fathom-canary-silent"]
    assert named(firing(store, rule, at), "deployment") == {("silent",)}
    assert firing(store, rule, at - timedelta(minutes=40)) == set()


def test_missing_data_rules_do_not_stay_quiet_on_an_empty_store() -> None:
    for uid in ("fathom-traffic-stopped", "fathom-canary-silent"):
        assert rules()[uid]["noDataState"] == "NoData", uid


RUNBOOKS = DASHBOARDS.parent / "docs/runbooks.md"


def test_every_rule_is_actionable() -> None:
    anchors = {
        line.removeprefix("## ").strip()
        for line in RUNBOOKS.read_text().splitlines()
        if line.startswith("## ")
    }
    for uid, rule in rules().items():
        notes = rule["annotations"]
        assert notes["summary"] and "{{ $labels.deployment }}" in notes["summary"], uid
        assert "$values.B.Value" in notes["description"], f"{uid}: the measured value"
        assert notes["runbook_url"] == f"docs/runbooks.md#{uid}" and uid in anchors, uid
        assert notes["__dashboardUid__"] and notes["__panelId__"].isdigit(), uid
