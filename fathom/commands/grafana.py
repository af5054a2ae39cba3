"""`fathom grafana push`: install Fathom's data source, folder, dashboards and alert rules.

The same files Grafana's file provisioning reads (dashboards/, which an installed package
carries as fathom/dashboards) are sent through the HTTP API with grafana-client, so a Grafana
that cannot mount files gets the same setup. Every resource
has a fixed uid: each one is looked up first and then created or updated, so pushing twice
changes nothing the second time but versions. Contact points and notification policies are
not pushed: the policy tree is the whole organisation's, see dashboards/provisioning/alerting.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO
from urllib.parse import unquote, urlsplit

import yaml

from fathom.commands.common import CommandError, store_setting


def _dashboards_directory() -> Path:
    """dashboards/ of a source checkout, else the copy an installed wheel carries."""
    package = Path(__file__).resolve().parents[1]
    checkout = package.parent / "dashboards"
    return checkout if (checkout / "provisioning").is_dir() else package / "dashboards"


DASHBOARDS = _dashboards_directory()
FOLDER_UID, FOLDER_TITLE = "fathom", "Fathom"
EXIT_OK, EXIT_ERROR = 0, 2
_ENV_REFERENCE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


class PushError(CommandError):
    """The push cannot go on; the message says what to fix."""


class GrafanaAPI(Protocol):
    """The part of grafana_client.GrafanaApi used here (its methods are untyped)."""

    datasource: Any
    folder: Any
    dashboard: Any
    alertingprovisioning: Any


@dataclass(frozen=True, slots=True)
class Bundle:
    """Everything to install, in API form."""

    datasource: dict[str, Any]
    dashboards: list[dict[str, Any]]
    groups: list[tuple[str, int, list[dict[str, Any]]]]  # (name, interval s, API rules)


# ------------------------------------------------------------------ the files, in API form


def clickhouse_settings(url: str) -> dict[str, str]:
    """The data source's $FATHOM_CLICKHOUSE_* values from an http(s) store URL."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise PushError(
            f"Grafana reads ClickHouse over HTTP, and {url.split('@')[-1]!r} is not an http(s)"
            " ClickHouse URL (an embedded chdb:// store is only reachable in-process): pass"
            " --clickhouse http://USER:PASSWORD@HOST:8123/fathom"
        )
    secure = parts.scheme == "https"
    return {
        "FATHOM_CLICKHOUSE_HOST": parts.hostname,
        "FATHOM_CLICKHOUSE_PORT": str(parts.port or (8443 if secure else 8123)),
        "FATHOM_CLICKHOUSE_SECURE": "true" if secure else "false",
        "FATHOM_CLICKHOUSE_USER": unquote(parts.username or "default"),
        "FATHOM_CLICKHOUSE_PASSWORD": unquote(parts.password or ""),
    }


def expand_env(value: Any, env: Mapping[str, str]) -> Any:
    """Grafana's $VAR / ${VAR} expansion of provisioning values, recursively."""
    if isinstance(value, dict):
        return {key: expand_env(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [expand_env(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in env:
            raise PushError(f"the data source file refers to ${name}, which push cannot fill")
        return env[name]

    return _ENV_REFERENCE.sub(one, value)


def datasource_body(directory: Path, clickhouse_url: str) -> dict[str, Any]:
    """The provisioned data source with the store's address filled in, typed for the API."""
    path = directory / "provisioning/datasources/fathom-clickhouse.yaml"
    source = yaml.safe_load(path.read_text())["datasources"][0]
    body: dict[str, Any] = expand_env(source, clickhouse_settings(clickhouse_url))
    body["jsonData"]["port"] = int(body["jsonData"]["port"])
    body["jsonData"]["secure"] = body["jsonData"]["secure"] == "true"
    body.pop("orgId", None)
    body.pop("editable", None)
    return body


def api_rules(group: Mapping[str, Any], runbook_base: str = "") -> list[dict[str, Any]]:
    """A provisioning file's rule group as provisioning-API rules."""
    keep = ("uid", "title", "condition", "data", "noDataState", "execErrState", "for")
    return [
        {
            **{key: rule[key] for key in keep},
            "labels": rule.get("labels", {}),
            "annotations": with_runbook_base(rule.get("annotations", {}), runbook_base),
            "folderUID": FOLDER_UID,
            "ruleGroup": group["name"],
            "orgID": group.get("orgId", 1),
            "isPaused": False,
        }
        for rule in group["rules"]
    ]


def with_runbook_base(annotations: Mapping[str, str], base: str) -> dict[str, str]:
    """The annotations with a repository-relative runbook_url made absolute under `base`."""
    url = annotations.get("runbook_url", "")
    if not base or not url or urlsplit(url).scheme:
        return dict(annotations)
    return {**annotations, "runbook_url": base.rstrip("/") + "/" + url.lstrip("/")}


def interval_seconds(text: str) -> int:
    """'1m' -> 60, '5m' -> 300, '30s' -> 30."""
    units = {"s": 1, "m": 60, "h": 3600}
    return int(text[:-1]) * units[text[-1]]


def load_bundle(directory: Path, clickhouse_url: str, runbook_base: str = "") -> Bundle:
    """Read dashboards/ into what the API wants."""
    dashboards = [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]
    rules = yaml.safe_load((directory / "provisioning/alerting/fathom-rules.yaml").read_text())
    groups = [
        (group["name"], interval_seconds(group["interval"]), api_rules(group, runbook_base))
        for group in rules["groups"]
    ]
    bundle = Bundle(datasource_body(directory, clickhouse_url), dashboards, groups)
    check_panel_links(bundle)
    return bundle


def check_panel_links(bundle: Bundle) -> None:
    """Refuse, before anything is pushed, a rule whose dashboard link Grafana would reject."""
    panel_ids = {d["uid"]: {p["id"] for p in d["panels"]} for d in bundle.dashboards}
    for _, _, rules in bundle.groups:
        for rule in rules:
            dashboard = rule["annotations"].get("__dashboardUid__", "")
            panel = rule["annotations"].get("__panelId__", "")
            if not dashboard and not panel:
                continue
            if not str(panel).isdigit() or int(panel) not in panel_ids.get(dashboard, set()):
                raise PushError(
                    f"alert rule {rule['uid']} links to panel {panel!r} of dashboard"
                    f" {dashboard!r}, which {_why_unlinked(dashboard, panel_ids)}: Grafana needs"
                    " __dashboardUid__ and __panelId__ together, naming an existing panel"
                )


def _why_unlinked(dashboard: str, panel_ids: Mapping[str, set[int]]) -> str:
    return "has no such panel" if dashboard in panel_ids else "is not among the dashboards"


# ------------------------------------------------------------------ talking to Grafana


@dataclass(frozen=True, slots=True)
class Change:
    """What push did to one resource."""

    kind: str
    uid: str
    action: str  # 'created' or 'updated'


def _exists(lookup: Callable[[], Any]) -> bool:
    from grafana_client.client import GrafanaClientError

    try:
        lookup()
    except GrafanaClientError as exc:
        if exc.status_code == 404:
            return False
        raise
    return True


def push_datasource(api: GrafanaAPI, body: dict[str, Any]) -> Change:
    """Create or update the data source by uid."""
    uid = body["uid"]
    if _exists(lambda: api.datasource.get_datasource_by_uid(uid)):
        api.datasource.update_datasource_by_uid(uid, body)
        return Change("datasource", uid, "updated")
    api.datasource.create_datasource(body)
    return Change("datasource", uid, "created")


def push_folder(api: GrafanaAPI) -> Change:
    """Create or update the Fathom folder."""
    if _exists(lambda: api.folder.get_folder(FOLDER_UID)):
        api.folder.update_folder(FOLDER_UID, title=FOLDER_TITLE, overwrite=True)
        return Change("folder", FOLDER_UID, "updated")
    api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
    return Change("folder", FOLDER_UID, "created")


def push_dashboard(api: GrafanaAPI, dashboard: dict[str, Any]) -> Change:
    """Save a dashboard into the folder (overwrite keeps the uid, bumps the version)."""
    uid = dashboard["uid"]
    existed = _exists(lambda: api.dashboard.get_dashboard(uid))
    payload = {"id": None, **dashboard}
    api.dashboard.update_dashboard(
        {
            "dashboard": payload,
            "folderUid": FOLDER_UID,
            "overwrite": True,
            "message": "fathom grafana push",
        }
    )
    return Change("dashboard", uid, "updated" if existed else "created")


def push_rule(api: GrafanaAPI, rule: dict[str, Any]) -> Change:
    """Create or update one alert rule by uid."""
    uid = rule["uid"]
    provisioning = api.alertingprovisioning
    if _exists(lambda: provisioning.get_alertrule(uid)):
        provisioning.update_alertrule(uid, rule)
        return Change("alert rule", uid, "updated")
    provisioning.create_alertrule(rule)
    return Change("alert rule", uid, "created")


def push_group_interval(api: GrafanaAPI, name: str, interval: int) -> Change:
    """Set a rule group's evaluation interval, keeping its rules as they are."""
    provisioning = api.alertingprovisioning
    group = provisioning.get_rule_group(FOLDER_UID, name)
    provisioning.update_rule_group(FOLDER_UID, name, {**group, "interval": interval})
    return Change("rule group", name, "updated")


def push(api: GrafanaAPI, bundle: Bundle) -> Iterator[Change]:
    """Install everything, in dependency order; yields each change as it is made."""
    yield push_datasource(api, bundle.datasource)
    yield push_folder(api)
    for dashboard in bundle.dashboards:
        yield push_dashboard(api, dashboard)
    for name, interval, rules in bundle.groups:
        for rule in rules:
            yield push_rule(api, rule)
        yield push_group_interval(api, name, interval)


# ------------------------------------------------------------------ the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`fathom grafana push` flags."""
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    push_parser = actions.add_parser("push", help="create or update everything (idempotent)")
    push_parser.add_argument(
        "--url", required=True, help="Grafana base URL, e.g. http://grafana:3000"
    )
    push_parser.add_argument("--token", help="service-account token (env FATHOM_GRAFANA_TOKEN)")
    push_parser.add_argument(
        "--clickhouse",
        help="http(s)://USER:PASSWORD@HOST:PORT/fathom that Grafana will query "
        "(default: the `store` setting)",
    )
    push_parser.add_argument(
        "--runbook-base",
        help="URL that the rules' repository-relative runbook links are made absolute under, "
        "e.g. https://git.example/fathom/blob/main (env FATHOM_RUNBOOK_BASE)",
    )
    push_parser.add_argument("--dashboards", type=Path, default=DASHBOARDS, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    """Entry point of `fathom grafana`."""
    return push_command(args, sys.stdout, sys.stderr, os.environ)


def push_command(args: argparse.Namespace, out: TextIO, err: TextIO, env: Mapping[str, str]) -> int:
    """Run `push` and report each change; 2 with a message on any failure."""
    from grafana_client.api import GrafanaApi
    from grafana_client.client import GrafanaException, GrafanaUnauthorizedError
    from niquests.exceptions import RequestException

    try:
        token = args.token or env.get("FATHOM_GRAFANA_TOKEN")
        if not token:
            raise PushError("no token: pass --token or set FATHOM_GRAFANA_TOKEN")
        runbook_base = args.runbook_base or env.get("FATHOM_RUNBOOK_BASE", "")
        bundle = load_bundle(args.dashboards, args.clickhouse or store_setting(None), runbook_base)
        api = GrafanaApi.from_url(args.url, credential=token)
        for change in push(api, bundle):
            print(f"{change.kind} {change.uid}: {change.action}", file=out)
    except CommandError as exc:
        print(f"fathom grafana push: {exc}", file=err)
        return EXIT_ERROR
    except GrafanaUnauthorizedError:
        print(
            f"fathom grafana push: {args.url} refused the token (401); use a service-account"
            " token with the Admin role (or Editor plus alerting write)",
            file=err,
        )
        return EXIT_ERROR
    except GrafanaException as exc:
        where = "cannot reach" if exc.status_code == 0 else f"error {exc.status_code} from"
        print(f"fathom grafana push: {where} Grafana at {args.url}: {exc.message}", file=err)
        return EXIT_ERROR
    except RequestException as exc:
        print(f"fathom grafana push: cannot reach Grafana at {args.url}: {exc}", file=err)
        return EXIT_ERROR
    print(
        f"Grafana at {args.url} has Fathom's {len(bundle.dashboards)} dashboards and "
        f"{sum(len(rules) for _, _, rules in bundle.groups)} alert rules",
        file=out,
    )
    return EXIT_OK
