"""Grafana's own rules for provisioned data sources, dashboards and alert rules, as a validator.

No Grafana runs here. These checks encode what Grafana (and grafana-clickhouse-datasource v4)
refuse or silently mangle, each next to the rule it follows:
- uids: `util.IsValidShortUID` (letters, digits, '-', '_') and at most 40 characters;
- alert rules (`ngalert/models`, provisioning `rules_types.go`): a title, a condition naming
  one of the rule's refIds, queries with unique refIds, expressions of a known type pointing
  at existing refIds, a relative time range with from > to on data-source queries,
  `noDataState` in {Alerting, NoData, OK, KeepLast}, `execErrState` in {Alerting, Error, OK,
  KeepLast}, `for` a Prometheus duration, and `__dashboardUid__` only together with an integer
  `__panelId__` ("both annotations __dashboardUid__ and __panelId__ must be specified");
- rule groups: a name, a folder, an interval that is a positive multiple of the scheduler's
  10 s base interval;
- dashboards: a panel without `pluginVersion` is run through the panel's migration from its
  oldest options (for the XY chart that nests the already-new series matchers), so every panel
  states the version its options are written for;
- the ClickHouse plugin's query model: `queryType` in {table, logs, timeseries, traces} with the
  matching numeric `format` (mapQueryTypeToGrafanaFormat: table 1, logs 2, timeseries 0,
  traces 3, or 1 for a trace search).
Fathom's stricter additions are marked: a `__panelId__` must name a panel that exists in the
dashboard `__dashboardUid__` names, and every data source uid used must be one provisioned.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

MAX_UID = 40
_UID = re.compile(r"^[a-zA-Z0-9\-_]*$")
_DURATION = re.compile(r"^(?:\d+y)?(?:\d+w)?(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?(?:\d+ms)?$")
_DURATION_PART = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
BASE_INTERVAL_S = 10
NO_DATA_STATES = {"Alerting", "NoData", "OK", "KeepLast"}
EXEC_ERR_STATES = {"Alerting", "Error", "OK", "KeepLast"}
EXPRESSIONS = {"__expr__", "-100"}
EXPRESSION_TYPES = {"math", "reduce", "resample", "classic_conditions", "threshold", "sql"}
REDUCERS = {"sum", "mean", "min", "max", "count", "last", "median"}
REDUCE_MODES = {"", "strict", "dropNN", "replaceNN"}
EVALUATORS = {
    "gt", "lt", "eq", "ne", "gte", "lte", "within_range", "outside_range",
    "within_range_included", "outside_range_included",
}  # fmt: skip
CLICKHOUSE = "grafana-clickhouse-datasource"
CLICKHOUSE_FORMATS = {"table": {1}, "logs": {2}, "timeseries": {0}, "traces": {1, 3}}
BUILT_IN_DATASOURCES = {"-- Grafana --", "grafana", "-- Dashboard --", "-- Mixed --"}
DASHBOARD_UID, PANEL_ID = "__dashboardUid__", "__panelId__"
XYCHART_NEW_OPTIONS = (11, 1)  # xychart options before 11.1 are migrated to the new form


def duration_seconds(text: str) -> float:
    """Seconds in a Prometheus duration ('1m', '1h30m', '0s'); ValueError if it is not one."""
    if text == "0":
        return 0.0
    if not text or not _DURATION.match(text):
        raise ValueError(f"{text!r} is not a duration like 30s, 5m or 1h")
    return sum(int(n) * _SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def uid_problems(kind: str, uid: Any) -> list[str]:
    """Grafana's short-uid rule."""
    if not isinstance(uid, str) or not uid:
        return [f"{kind}: uid missing"]
    if len(uid) > MAX_UID:
        return [f"{kind} {uid}: uid longer than {MAX_UID} characters"]
    if not _UID.match(uid):
        return [f"{kind} {uid}: uid may hold only letters, digits, '-' and '_'"]
    return []


# ------------------------------------------------------------------ data sources


def datasource_file_problems(document: Mapping[str, Any]) -> list[str]:
    """A provisioning/datasources/*.yaml file."""
    problems = [] if document.get("apiVersion") == 1 else ["datasources: apiVersion must be 1"]
    sources = document.get("datasources") or []
    if sum(bool(s.get("isDefault")) for s in sources) > 1:
        problems.append("datasources: more than one isDefault")
    for source in sources:
        problems += datasource_problems(source)
    return problems


def datasource_problems(source: Mapping[str, Any]) -> list[str]:
    """One data source, as in a provisioning file or an API body."""
    name = source.get("name") or "?"
    problems = uid_problems(f"data source {name}", source.get("uid"))
    if not source.get("name") or not source.get("type"):
        problems.append(f"data source {name}: name and type are required")
    if source.get("access", "proxy") not in {"proxy", "direct"}:
        problems.append(f"data source {name}: access must be proxy or direct")
    return problems


# ------------------------------------------------------------------ dashboards


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def dashboard_problems(dashboard: Mapping[str, Any], datasource_uids: Iterable[str]) -> list[str]:
    """One dashboard JSON: uid, panels, queries, variables and annotations."""
    known = set(datasource_uids) | BUILT_IN_DATASOURCES
    uid = dashboard.get("uid")
    problems = uid_problems("dashboard", uid)
    if not dashboard.get("title"):
        problems.append(f"dashboard {uid}: title missing")
    ids = [panel.get("id") for panel in panels(dashboard)]
    if len(ids) != len(set(ids)) or not all(isinstance(i, int) for i in ids):
        problems.append(f"dashboard {uid}: panel ids must be unique integers")
    for panel in panels(dashboard):
        problems += panel_problems(f"dashboard {uid} panel {panel.get('title')!r}", panel, known)
    names = [v.get("name") for v in dashboard.get("templating", {}).get("list", [])]
    if len(names) != len(set(names)):
        problems.append(f"dashboard {uid}: variable names repeat")
    for variable in dashboard.get("templating", {}).get("list", []):
        problems += _datasource_ref(f"dashboard {uid} variable {variable.get('name')}",
                                    variable.get("datasource"), known)  # fmt: skip
    for annotation in dashboard.get("annotations", {}).get("list", []):
        where = f"dashboard {uid} annotation {annotation.get('name')}"
        problems += _datasource_ref(where, annotation.get("datasource"), known)
        if "target" in annotation:
            problems += query_problems(where, annotation["target"], known)
    return problems


def panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' collapsed panels included."""
    out: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def panel_problems(where: str, panel: Mapping[str, Any], known: set[str]) -> list[str]:
    """One panel: its plugin version, data source and queries."""
    problems = []
    version = panel.get("pluginVersion")
    if panel.get("type") != "row" and not version:
        problems.append(f"{where}: no pluginVersion, so Grafana migrates its options as old ones")
    elif panel.get("type") == "xychart" and _version(str(version)) < XYCHART_NEW_OPTIONS:
        problems.append(f"{where}: xychart options need pluginVersion 11.1 or later")
    targets = panel.get("targets", [])
    if targets or "datasource" in panel:
        problems += _datasource_ref(where, panel.get("datasource"), known)
    refs = [target.get("refId") for target in targets]
    if len(refs) != len(set(refs)) or not all(refs):
        problems.append(f"{where}: query refIds must be set and unique")
    for target in targets:
        problems += query_problems(f"{where} query {target.get('refId')}", target, known)
    return problems


def _datasource_ref(where: str, ref: Any, known: set[str]) -> list[str]:
    if ref is None:
        return []
    uid = ref.get("uid") if isinstance(ref, dict) else ref
    return [] if uid in known or str(uid).startswith("$") else [f"{where}: no data source {uid}"]


def query_problems(where: str, query: Mapping[str, Any], known: set[str]) -> list[str]:
    """A panel, annotation or alert query for the ClickHouse plugin: data source and format."""
    problems = _datasource_ref(where, query.get("datasource"), known)
    source = query.get("datasource")
    if isinstance(source, dict) and source.get("type") != CLICKHOUSE:
        return problems
    if query.get("editorType", "sql") == "sql" and not str(query.get("rawSql", "")).strip():
        problems.append(f"{where}: rawSql is empty")
    query_type, fmt = query.get("queryType"), query.get("format")
    if query_type is None and fmt is None:
        return problems
    if query_type not in CLICKHOUSE_FORMATS:
        problems.append(f"{where}: queryType {query_type!r} is none of the plugin's")
    elif fmt not in CLICKHOUSE_FORMATS[query_type]:
        problems.append(f"{where}: format {fmt!r} does not go with queryType {query_type}")
    return problems


# ------------------------------------------------------------------ alert rules


def rule_file_problems(
    document: Mapping[str, Any],
    dashboards: Mapping[str, Mapping[str, Any]],
    datasource_uids: Iterable[str],
) -> list[str]:
    """A provisioning/alerting/*.yaml rules file (groups with `interval` as a duration)."""
    problems = [] if document.get("apiVersion") == 1 else ["rules: apiVersion must be 1"]
    uids: list[str] = []
    for group in document.get("groups", []):
        name = group.get("name")
        if not name or not str(group.get("folder", "")).strip():
            problems.append(f"rule group {name}: name and folder are required")
        try:
            problems += interval_problems(f"rule group {name}", duration_seconds(group["interval"]))
        except (KeyError, ValueError) as exc:
            problems.append(f"rule group {name}: interval: {exc}")
        for rule in group.get("rules", []):
            uids.append(rule.get("uid"))
            problems += rule_problems(rule, dashboards, datasource_uids)
    if len(uids) != len(set(uids)):
        problems.append("rules: uids repeat")
    return problems


def interval_problems(where: str, seconds: float) -> list[str]:
    """The scheduler evaluates on multiples of its base interval."""
    if seconds <= 0 or seconds % BASE_INTERVAL_S:
        return [f"{where}: interval must be a positive multiple of {BASE_INTERVAL_S}s"]
    return []


def rule_problems(
    rule: Mapping[str, Any],
    dashboards: Mapping[str, Mapping[str, Any]],
    datasource_uids: Iterable[str],
) -> list[str]:
    """One rule, as in a provisioning file or a provisioning-API body."""
    known = set(datasource_uids)
    where = f"rule {rule.get('uid')}"
    problems = uid_problems("rule", rule.get("uid"))
    title = rule.get("title") or ""
    if not title or len(title) > 190:
        problems.append(f"{where}: title must be 1 to 190 characters")
    problems += _state_problems(where, rule)
    try:
        duration_seconds(str(rule.get("for", "0s")))
    except ValueError as exc:
        problems.append(f"{where}: for: {exc}")
    problems += _data_problems(where, rule, known)
    problems += _panel_link_problems(where, rule.get("annotations") or {}, dashboards)
    for key, value in (rule.get("labels") or {}).items():
        if not isinstance(value, str) or key.startswith("__"):
            problems.append(f"{where}: label {key} must be a string and not reserved")
    return problems


def _state_problems(where: str, rule: Mapping[str, Any]) -> list[str]:
    problems = []
    if rule.get("noDataState") not in NO_DATA_STATES:
        problems.append(
            f"{where}: noDataState {rule.get('noDataState')!r} is not one Grafana knows"
        )
    if rule.get("execErrState") not in EXEC_ERR_STATES:
        problems.append(
            f"{where}: execErrState {rule.get('execErrState')!r} is not one Grafana knows"
        )
    return problems


def _data_problems(where: str, rule: Mapping[str, Any], known: set[str]) -> list[str]:
    data = rule.get("data") or []
    refs = [query.get("refId") for query in data]
    problems = [] if data else [f"{where}: no queries"]
    if len(refs) != len(set(refs)) or not all(refs):
        problems.append(f"{where}: query refIds must be set and unique")
    if rule.get("condition") not in refs:
        problems.append(f"{where}: condition {rule.get('condition')!r} names no query")
    for query in data:
        at = f"{where} query {query.get('refId')}"
        model = query.get("model") or {}
        if query.get("datasourceUid") in EXPRESSIONS:
            problems += _expression_problems(at, model, set(refs))
            continue
        if query.get("datasourceUid") not in known:
            problems.append(f"{at}: no data source {query.get('datasourceUid')}")
        span = query.get("relativeTimeRange") or {}
        if not span.get("from", 0) > span.get("to", 0) >= 0:
            problems.append(f"{at}: relativeTimeRange needs from > to >= 0")
        problems += query_problems(at, model, known)
    return problems


def _expression_problems(where: str, model: Mapping[str, Any], refs: set[str]) -> list[str]:
    kind = model.get("type")
    if kind not in EXPRESSION_TYPES:
        return [f"{where}: expression type {kind!r} is not one Grafana knows"]
    problems = []
    if kind in {"reduce", "resample", "threshold"} and model.get("expression") not in refs:
        problems.append(f"{where}: expression input {model.get('expression')!r} names no query")
    if kind == "reduce":
        if model.get("reducer") not in REDUCERS:
            problems.append(f"{where}: reducer {model.get('reducer')!r} is not one Grafana knows")
        if (model.get("settings") or {}).get("mode", "") not in REDUCE_MODES:
            problems.append(f"{where}: reduce mode is not one Grafana knows")
    if kind == "threshold":
        for condition in model.get("conditions") or [{}]:
            if (condition.get("evaluator") or {}).get("type") not in EVALUATORS:
                problems.append(f"{where}: threshold evaluator is not one Grafana knows")
    return problems


def _panel_link_problems(
    where: str, annotations: Mapping[str, Any], dashboards: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    if any(not isinstance(value, str) for value in annotations.values()):
        return [f"{where}: annotation values must be strings"]
    dashboard, panel = annotations.get(DASHBOARD_UID, ""), annotations.get(PANEL_ID, "")
    if bool(dashboard) != bool(panel):
        return [f"{where}: both annotations {DASHBOARD_UID} and {PANEL_ID} must be specified"]
    if not dashboard:
        return []
    if not re.fullmatch(r"-?\d+", panel):
        return [f"{where}: annotation {PANEL_ID} must be a valid integer Panel ID"]
    if dashboard not in dashboards:  # Fathom's: the link must lead somewhere
        return [f"{where}: {DASHBOARD_UID} {dashboard} is no shipped dashboard"]
    if int(panel) not in {p.get("id") for p in panels(dashboards[dashboard])}:
        return [f"{where}: {PANEL_ID} {panel} is no panel of {dashboard}"]
    return []
