"""A small, honest fake of Grafana's HTTP API (no Grafana runs here): the endpoints
`fathom grafana push` uses, with real state, answering as Grafana does.

404 for unknown uids, 409/412 when creating what exists or overwriting without `overwrite`,
400 for a dashboard in a missing folder and for whatever Grafana's own validation refuses (the
rules in tests/support/grafana_provisioning.py), 401 without the token, and a rule-group PUT
that replaces the group's rules (as Grafana's does).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support import grafana_provisioning as provisioning
from tests.support import servers

TOKEN = "glsa_test_token"
CLICKHOUSE = "https://fathom_reader:s3cret%21@ch.example:8443/fathom"


@dataclass
class FakeGrafana:
    """What the fake Grafana holds, and every call it got."""

    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    intervals: dict[tuple[str, str], int] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    created: Counter[str] = field(default_factory=Counter)


State = web.AppKey("state", FakeGrafana)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


@web.middleware
async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
    """Bearer token or 401; every call is recorded."""
    request.app[State].calls.append((request.method, request.path))
    if request.headers.get("Authorization") != f"Bearer {TOKEN}":
        return _error(401, "Unauthorized")
    response: web.StreamResponse = await handler(request)
    return response


async def get_datasource(request: web.Request) -> web.Response:
    found = request.app[State].datasources.get(request.match_info["uid"])
    return web.json_response(found) if found else _error(404, "Data source not found")


async def create_datasource(request: web.Request) -> web.Response:
    state, body = request.app[State], await request.json()
    if problems := provisioning.datasource_problems(body):
        return _error(400, "; ".join(problems))
    if body["uid"] in state.datasources:
        return _error(409, "data source with the same uid already exists")
    state.datasources[body["uid"]] = {**body, "id": len(state.datasources) + 1, "version": 1}
    state.created["datasource"] += 1
    return web.json_response(
        {"datasource": state.datasources[body["uid"]], "message": "Datasource added"}
    )


async def update_datasource(request: web.Request) -> web.Response:
    state, uid = request.app[State], request.match_info["uid"]
    if uid not in state.datasources:
        return _error(404, "Data source not found")
    old = state.datasources[uid]
    state.datasources[uid] = {
        **(await request.json()),
        "id": old["id"],
        "version": old["version"] + 1,
    }
    return web.json_response(
        {"datasource": state.datasources[uid], "message": "Datasource updated"}
    )


async def get_folder(request: web.Request) -> web.Response:
    found = request.app[State].folders.get(request.match_info["uid"])
    return web.json_response(found) if found else _error(404, "folder not found")


async def create_folder(request: web.Request) -> web.Response:
    state, body = request.app[State], await request.json()
    if body.get("uid") in state.folders:
        return _error(409, "a folder with the same uid already exists")
    state.folders[body["uid"]] = {"uid": body["uid"], "title": body["title"], "version": 1}
    state.created["folder"] += 1
    return web.json_response(state.folders[body["uid"]])


async def update_folder(request: web.Request) -> web.Response:
    state, uid, body = request.app[State], request.match_info["uid"], await request.json()
    folder = state.folders.get(uid)
    if folder is None:
        return _error(404, "folder not found")
    if not body.get("overwrite") and body.get("version") != folder["version"]:
        return _error(412, "the folder has been changed by someone else")
    folder.update(title=body.get("title", folder["title"]), version=folder["version"] + 1)
    return web.json_response(folder)


async def get_dashboard(request: web.Request) -> web.Response:
    found = request.app[State].dashboards.get(request.match_info["uid"])
    return (
        web.json_response({"dashboard": found, "meta": {}})
        if found
        else _error(404, "Dashboard not found")
    )


async def save_dashboard(request: web.Request) -> web.Response:
    state, body = request.app[State], await request.json()
    dashboard, folder = body["dashboard"], body.get("folderUid")
    if folder not in state.folders:
        return _error(400, "folder not found")
    if problems := provisioning.dashboard_problems(dashboard, state.datasources):
        return _error(400, "; ".join(problems))
    old = state.dashboards.get(dashboard["uid"])
    if old is not None and not body.get("overwrite"):
        return _error(412, "version-mismatch")
    version = old["version"] + 1 if old else 1
    state.dashboards[dashboard["uid"]] = {**dashboard, "version": version, "folderUid": folder}
    if old is None:
        state.created["dashboard"] += 1
    return web.json_response({"status": "success", "uid": dashboard["uid"], "version": version})


async def get_rule(request: web.Request) -> web.Response:
    found = request.app[State].rules.get(request.match_info["uid"])
    return web.json_response(found) if found else _error(404, "rule not found")


def _rule_problem(state: FakeGrafana, rule: dict[str, Any]) -> str | None:
    if rule.get("folderUID") not in state.folders:
        return "folder does not exist"
    if not rule.get("ruleGroup"):
        return "ruleGroup is required"
    problems = provisioning.rule_problems(rule, state.dashboards, state.datasources)
    return "; ".join(problems) or None


async def create_rule(request: web.Request) -> web.Response:
    state, rule = request.app[State], await request.json()
    if rule["uid"] in state.rules:
        return _error(409, "a rule with this uid already exists")
    if problem := _rule_problem(state, rule):
        return _error(400, problem)
    state.rules[rule["uid"]] = rule
    state.intervals.setdefault((rule["folderUID"], rule["ruleGroup"]), 60)
    state.created["alert rule"] += 1
    return web.json_response(rule, status=201)


async def update_rule(request: web.Request) -> web.Response:
    state, uid, rule = request.app[State], request.match_info["uid"], await request.json()
    if uid not in state.rules:
        return _error(404, "rule not found")
    if problem := _rule_problem(state, rule):
        return _error(400, problem)
    state.rules[uid] = rule
    return web.json_response(rule)


def _group_rules(state: FakeGrafana, folder: str, group: str) -> list[dict[str, Any]]:
    return [r for r in state.rules.values() if (r["folderUID"], r["ruleGroup"]) == (folder, group)]


async def get_group(request: web.Request) -> web.Response:
    state, folder, group = (
        request.app[State],
        request.match_info["folder"],
        request.match_info["group"],
    )
    rules = _group_rules(state, folder, group)
    if not rules:
        return _error(404, "rule group does not exist")
    body = {
        "title": group,
        "folderUid": folder,
        "interval": state.intervals[(folder, group)],
        "rules": rules,
    }
    return web.json_response(body)


async def put_group(request: web.Request) -> web.Response:
    state, folder, group = (
        request.app[State],
        request.match_info["folder"],
        request.match_info["group"],
    )
    body = await request.json()
    kept = {rule["uid"] for rule in body.get("rules", [])}
    for rule in _group_rules(state, folder, group):  # Grafana deletes the rules left out
        if rule["uid"] not in kept:
            del state.rules[rule["uid"]]
    if problems := provisioning.interval_problems(group, int(body["interval"])):
        return _error(400, "; ".join(problems))
    state.intervals[(folder, group)] = int(body["interval"])
    return web.json_response(body)


def fake_grafana() -> web.Application:
    """The fake's routes, the paths grafana-client calls."""
    app = web.Application(middlewares=[auth])
    app[State] = FakeGrafana()
    app.router.add_get("/api/datasources/uid/{uid}", get_datasource)
    app.router.add_post("/api/datasources", create_datasource)
    app.router.add_put("/api/datasources/uid/{uid}", update_datasource)
    app.router.add_get("/api/folders/{uid}", get_folder)
    app.router.add_post("/api/folders", create_folder)
    app.router.add_put("/api/folders/{uid}", update_folder)
    app.router.add_get("/api/dashboards/uid/{uid}", get_dashboard)
    app.router.add_post("/api/dashboards/db", save_dashboard)
    app.router.add_get("/api/v1/provisioning/alert-rules/{uid}", get_rule)
    app.router.add_post("/api/v1/provisioning/alert-rules", create_rule)
    app.router.add_put("/api/v1/provisioning/alert-rules/{uid}", update_rule)
    app.router.add_get("/api/v1/provisioning/folder/{folder}/rule-groups/{group}", get_group)
    app.router.add_put("/api/v1/provisioning/folder/{folder}/rule-groups/{group}", put_group)
    return app


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[tuple[str, FakeGrafana]]:
    """The fake on a free port of 127.0.0.1: its base URL and its state; stopped after."""
    app = fake_grafana()
    async with servers.serving(app) as url:
        yield url, app[State]
