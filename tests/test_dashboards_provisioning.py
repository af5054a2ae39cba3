"""Everything shipped for Grafana, and everything `fathom grafana push` sends, passes the rules
Grafana applies (tests/support/grafana_provisioning.py); and each defect a real Grafana refused
or mangled is caught by them."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from fathom.commands import grafana
from tests.support import grafana_provisioning as g

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"
RULES = DASHBOARDS / "provisioning/alerting/fathom-rules.yaml"
DATASOURCES = DASHBOARDS / "provisioning/datasources/fathom-clickhouse.yaml"
Mutation = Callable[[dict[str, Any], dict[str, dict[str, Any]]], None]


def shipped() -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]]:
    """(data source file, dashboards by uid, rules file) as shipped."""
    dashboards = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        doc = json.loads(path.read_text())
        dashboards[doc["uid"]] = doc
    return yaml.safe_load(DATASOURCES.read_text()), dashboards, yaml.safe_load(RULES.read_text())


def datasource_uids() -> list[str]:
    """The uids the provisioned data source file defines."""
    return [source["uid"] for source in shipped()[0]["datasources"]]


def problems_of(rules: dict[str, Any], dashboards: dict[str, dict[str, Any]]) -> list[str]:
    """Every problem in the dashboards and the rules file."""
    uids = datasource_uids()
    found = g.rule_file_problems(rules, dashboards, uids)
    for doc in dashboards.values():
        found += g.dashboard_problems(doc, uids)
    return found


def test_the_shipped_files_pass() -> None:
    sources, dashboards, rules = shipped()
    assert g.datasource_file_problems(sources) == []
    assert problems_of(rules, dashboards) == []


def test_what_push_sends_passes() -> None:
    bundle = grafana.load_bundle(DASHBOARDS, "http://reader:pw@clickhouse:8123/fathom")
    assert g.datasource_problems(bundle.datasource) == []
    uids = [bundle.datasource["uid"]]
    by_uid = {doc["uid"]: doc for doc in bundle.dashboards}
    for doc in bundle.dashboards:
        assert g.dashboard_problems(doc, uids) == []
    for name, interval, rules in bundle.groups:
        assert g.interval_problems(name, interval) == []
        for rule in rules:
            assert g.rule_problems(rule, by_uid, uids) == []
            assert rule["folderUID"] == grafana.FOLDER_UID and rule["ruleGroup"] == name


def _first_rule(rules: dict[str, Any]) -> dict[str, Any]:
    rule: dict[str, Any] = rules["groups"][0]["rules"][0]
    return rule


def _panel(dashboards: dict[str, dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(p for d in dashboards.values() for p in d["panels"] if p["type"] == kind)


def _drop_panel_id(rules: dict[str, Any], _: dict[str, dict[str, Any]]) -> None:
    del _first_rule(rules)["annotations"]["__panelId__"]


def _panel_id_nowhere(rules: dict[str, Any], _: dict[str, dict[str, Any]]) -> None:
    _first_rule(rules)["annotations"]["__panelId__"] = "999"


def _xychart_unversioned(_: dict[str, Any], dashboards: dict[str, dict[str, Any]]) -> None:
    del _panel(dashboards, "xychart")["pluginVersion"]


def _xychart_old(_: dict[str, Any], dashboards: dict[str, dict[str, Any]]) -> None:
    _panel(dashboards, "xychart")["pluginVersion"] = "10.4.0"


def _bad_no_data(rules: dict[str, Any], _: dict[str, dict[str, Any]]) -> None:
    _first_rule(rules)["noDataState"] = "Ok"


def _bad_exec_err(rules: dict[str, Any], _: dict[str, dict[str, Any]]) -> None:
    _first_rule(rules)["execErrState"] = "NoData"


def _condition_nowhere(rules: dict[str, Any], _: dict[str, dict[str, Any]]) -> None:
    _first_rule(rules)["condition"] = "Z"


def _reduce_of_nothing(rules: dict[str, Any], _: dict[str, dict[str, Any]]) -> None:
    _first_rule(rules)["data"][1]["model"]["expression"] = "Q"


def _unknown_expression(rules: dict[str, Any], _: dict[str, dict[str, Any]]) -> None:
    _first_rule(rules)["data"][1]["model"]["type"] = "average"


def _format_mismatch(_: dict[str, Any], dashboards: dict[str, dict[str, Any]]) -> None:
    _panel(dashboards, "timeseries")["targets"][0]["format"] = 1


def _alert_format_mismatch(rules: dict[str, Any], _: dict[str, dict[str, Any]]) -> None:
    _first_rule(rules)["data"][0]["model"]["queryType"] = "timeseries"


def _unknown_datasource(rules: dict[str, Any], _: dict[str, dict[str, Any]]) -> None:
    _first_rule(rules)["data"][0]["datasourceUid"] = "clickhouse"


def _long_uid(rules: dict[str, Any], _: dict[str, dict[str, Any]]) -> None:
    _first_rule(rules)["uid"] = "fathom-" + "x" * 40


def _bad_uid(_: dict[str, Any], dashboards: dict[str, dict[str, Any]]) -> None:
    next(iter(dashboards.values()))["uid"] = "fathom speed"


def _bad_for(rules: dict[str, Any], _: dict[str, dict[str, Any]]) -> None:
    _first_rule(rules)["for"] = "5 minutes"


def _odd_interval(rules: dict[str, Any], _: dict[str, dict[str, Any]]) -> None:
    rules["groups"][0]["interval"] = "45s"


def _inverted_range(rules: dict[str, Any], _: dict[str, dict[str, Any]]) -> None:
    _first_rule(rules)["data"][0]["relativeTimeRange"] = {"from": 0, "to": 600}


DEFECTS: dict[str, tuple[Mutation, str]] = {
    "dashboard uid without panel id": (_drop_panel_id, "both annotations __dashboardUid__"),
    "panel id of no panel": (_panel_id_nowhere, "__panelId__ 999 is no panel"),
    "xychart without pluginVersion": (_xychart_unversioned, "no pluginVersion"),
    "xychart from before 11.1": (_xychart_old, "pluginVersion 11.1"),
    "noDataState spelt wrong": (_bad_no_data, "noDataState 'Ok'"),
    "execErrState of noData": (_bad_exec_err, "execErrState 'NoData'"),
    "condition names no query": (_condition_nowhere, "condition 'Z' names no query"),
    "reduce of a missing query": (_reduce_of_nothing, "expression input 'Q'"),
    "unknown expression type": (_unknown_expression, "expression type 'average'"),
    "panel format vs queryType": (_format_mismatch, "format 1 does not go with queryType"),
    "alert format vs queryType": (_alert_format_mismatch, "does not go with queryType"),
    "unknown data source": (_unknown_datasource, "no data source clickhouse"),
    "uid too long": (_long_uid, "longer than 40"),
    "uid with a space": (_bad_uid, "only letters, digits"),
    "for not a duration": (_bad_for, "'5 minutes' is not a duration"),
    "interval off the 10 s grid": (_odd_interval, "multiple of 10s"),
    "relative range inverted": (_inverted_range, "from > to"),
}


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_each_defect_is_caught(defect: str) -> None:
    mutate, expected = DEFECTS[defect]
    _, dashboards, rules = shipped()
    rules, dashboards = copy.deepcopy(rules), copy.deepcopy(dashboards)
    mutate(rules, dashboards)
    found = problems_of(rules, dashboards)
    assert any(expected in problem for problem in found), found


def test_durations_parse_like_prometheus() -> None:
    assert [g.duration_seconds(t) for t in ("0s", "0", "30s", "5m", "1h30m", "7d")] == [
        0, 0, 30, 300, 5400, 604800,
    ]  # fmt: skip
    for bad in ("", "5", "m5", "1.5h", "5 m"):
        with pytest.raises(ValueError):
            g.duration_seconds(bad)


def test_push_refuses_an_unlinked_rule_before_pushing_anything(tmp_path: Path) -> None:
    copied = tmp_path / "dashboards"
    shutil.copytree(DASHBOARDS, copied)
    rules = yaml.safe_load(RULES.read_text())
    _drop_panel_id(rules, {})
    (copied / "provisioning/alerting/fathom-rules.yaml").write_text(yaml.safe_dump(rules))
    with pytest.raises(grafana.PushError, match="__dashboardUid__ and __panelId__ together"):
        grafana.load_bundle(copied, "http://reader:pw@clickhouse:8123/fathom")


def test_the_contact_point_example_links_dashboard_panel_silence_and_runbook() -> None:
    example = DASHBOARDS / "provisioning/alerting/contact-points.yaml.example"
    template = yaml.safe_load(example.read_text())["templates"][0]["template"]
    for field in (".DashboardURL", ".PanelURL", ".SilenceURL", ".Annotations.runbook_url"):
        assert field in template, field
    assert "&var-deployment={{ . }}" in template  # the link opens on the alert's deployment
    assert template.count("{{") == template.count("}}")
