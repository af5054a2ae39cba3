"""`fathom grafana push` against the fake Grafana of tests/support/fake_grafana.py (no Grafana
here), which keeps real state and refuses what Grafana refuses."""

from __future__ import annotations

import argparse
import asyncio
import io
import json

import pytest

from fathom.commands import grafana
from tests.support.fake_grafana import CLICKHOUSE, TOKEN, FakeGrafana


def push_args(
    url: str, token: str | None = TOKEN, clickhouse: str = CLICKHOUSE, *extra: str
) -> argparse.Namespace:
    """Parsed `fathom grafana push` flags."""
    parser = argparse.ArgumentParser()
    grafana.add_arguments(parser)
    argv = ["push", "--url", url, "--clickhouse", clickhouse] + (
        ["--token", token] if token else []
    )
    return parser.parse_args([*argv, *extra])


async def push(args: argparse.Namespace) -> tuple[int, str, str]:
    """Run the (blocking) push in a thread while the fake serves on this loop."""
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(grafana.push_command, args, out, err, {})
    return code, out.getvalue(), err.getvalue()


async def test_push_installs_everything_and_twice_creates_nothing_new(
    grafana_server: tuple[str, FakeGrafana],
) -> None:
    url, state = grafana_server
    code, out, err = await push(push_args(url))
    assert code == 0, err
    assert dict(state.created) == {"datasource": 1, "folder": 1, "dashboard": 3, "alert rule": 8}
    assert out.count(": created") == 13 and "s3cret" not in out
    assert set(state.dashboards) == {"fathom-speed", "fathom-quality", "fathom-quality-vs-speed"}
    assert state.intervals == {
        ("fathom", "fathom-quality"): 300,
        ("fathom", "fathom-speed"): 60,
        ("fathom", "fathom-missing-data"): 60,
    }
    first = {uid: json.dumps(rule, sort_keys=True) for uid, rule in state.rules.items()}
    calls = len(state.calls)

    code, out, err = await push(push_args(url))
    assert code == 0, err
    assert dict(state.created) == {"datasource": 1, "folder": 1, "dashboard": 3, "alert rule": 8}
    assert ": created" not in out and out.count(": updated") == 16
    assert {uid: json.dumps(rule, sort_keys=True) for uid, rule in state.rules.items()} == first
    assert {d["version"] for d in state.dashboards.values()} == {2}
    second = state.calls[calls:]
    assert not any(method == "POST" and "dashboards" not in path for method, path in second)


async def test_the_datasource_points_at_the_store(grafana_server: tuple[str, FakeGrafana]) -> None:
    url, state = grafana_server
    assert (await push(push_args(url)))[0] == 0
    source = state.datasources["fathom-clickhouse"]
    assert source["type"] == "grafana-clickhouse-datasource"
    assert source["jsonData"] == {
        "host": "ch.example",
        "port": 8443,
        "protocol": "http",
        "secure": True,
        "username": "fathom_reader",
        "defaultDatabase": "fathom",
    }
    assert source["secureJsonData"] == {"password": "s3cret!"}
    assert all(d["folderUid"] == "fathom" for d in state.dashboards.values())


async def test_failures_exit_2_with_a_reason(grafana_server: tuple[str, FakeGrafana]) -> None:
    url, state = grafana_server
    code, _, err = await push(push_args(url, token="wrong"))
    assert code == 2 and "refused the token (401)" in err
    code, _, err = await push(push_args(url, token=None))
    assert code == 2 and "FATHOM_GRAFANA_TOKEN" in err
    code, _, err = await push(push_args(url, clickhouse="chdb:///var/lib/fathom"))
    assert code == 2 and "--clickhouse http://" in err
    code, _, err = await push(push_args("http://127.0.0.1:9"))
    assert code == 2 and "cannot reach Grafana" in err
    assert not state.datasources and not state.dashboards and not state.rules


async def test_the_fake_refuses_a_rule_grafana_refuses(
    grafana_server: tuple[str, FakeGrafana],
) -> None:
    url, state = grafana_server
    bundle = grafana.load_bundle(grafana.DASHBOARDS, CLICKHOUSE)
    name, interval, rules = bundle.groups[0]
    unlinked = {**rules[0], "annotations": {"__dashboardUid__": "fathom-quality"}}
    broken = grafana.Bundle(bundle.datasource, bundle.dashboards, [(name, interval, [unlinked])])
    from grafana_client.api import GrafanaApi
    from grafana_client.client import GrafanaBadInputError

    api = GrafanaApi.from_url(url, credential=TOKEN)
    with pytest.raises(GrafanaBadInputError, match="both annotations __dashboardUid__"):
        await asyncio.to_thread(lambda: list(grafana.push(api, broken)))
    assert not state.rules and set(state.dashboards) == {d["uid"] for d in bundle.dashboards}


async def test_runbook_links_become_absolute_under_the_base(
    grafana_server: tuple[str, FakeGrafana],
) -> None:
    url, state = grafana_server
    base = "https://git.example/fathom/blob/main/"
    code, _, err = await push(push_args(url, TOKEN, CLICKHOUSE, "--runbook-base", base))
    assert code == 0, err
    links = {uid: rule["annotations"]["runbook_url"] for uid, rule in state.rules.items()}
    assert links["fathom-error-rate"] == f"{base}docs/runbooks.md#fathom-error-rate"
    assert all(link.startswith(base) for link in links.values())
