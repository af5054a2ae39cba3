"""Tenants: who a request is for, from a header or the hashed credential, capped like model
labels; stored in `fathom.requests.tenant` and carried as the `fathom.tenant` metric label."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from fathom.report import ReportSettings, build_report_sync, render_markdown
from sidecar.record import REQUEST_COLUMNS, Record
from sidecar.store.schema import apply as apply_schema
from tests.support import scrape
from tests.support.proxied import proxied
from tests.support.seeded import NOW
from tests.support.store import apply_before, embedded

TENANT = "x-tenant-id"
BODY = {"model": "sim", "messages": [{"role": "user", "content": "hi"}]}


async def _ask(session: aiohttp.ClientSession, url: str, **headers: str) -> str:
    async with session.post(url + "/v1/chat/completions", json=BODY, headers=headers) as resp:
        assert resp.status == 200
        return resp.headers["x-fathom-request-id"]


async def test_tenant_from_header_capped_and_counted(simulator: str) -> None:
    async with proxied(simulator, tenant_cap=2) as proxy, aiohttp.ClientSession() as session:
        asked = {
            "acme": await _ask(session, proxy.url, **{"x-tenant-id": "acme"}),
            "globex": await _ask(session, proxy.url, **{"X-Tenant-Id": "globex"}),
            "third": await _ask(session, proxy.url, **{"x-tenant-id": "initech"}),
            "again": await _ask(session, proxy.url, **{"x-tenant-id": "acme"}),
            "none": await _ask(session, proxy.url),
            "hostile": await _ask(session, proxy.url, **{"x-tenant-id": "a\tb"}),
        }
        page = await scrape.page(proxy.service.addresses["admin"])
    tenants = {name: proxy.record(rid).tenant for name, rid in asked.items()}
    assert tenants == {"acme": "acme", "globex": "globex", "third": "other", "again": "acme",
                       "none": "", "hostile": "other"}  # fmt: skip
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == "gen_ai_client_operation_duration_seconds_count":
                tenant = sample.labels["fathom_tenant"]
                counts[tenant] = counts.get(tenant, 0) + sample.value
    assert counts == {"acme": 2, "globex": 1, "other": 2, "": 1}


async def test_tenant_from_the_hashed_credential(simulator: str) -> None:
    settings = {"tenant_credential": True, "client_salt": "fixed"}
    async with proxied(simulator, **settings) as proxy, aiohttp.ClientSession() as session:
        first = await _ask(session, proxy.url, Authorization="Bearer sk-one")
        second = await _ask(session, proxy.url, Authorization="Bearer sk-one")
        other = await _ask(session, proxy.url, Authorization="Bearer sk-two")
        named = await _ask(session, proxy.url, **{"Authorization": "Bearer sk-two", TENANT: "t"})
    one, again, two, header = (proxy.record(r) for r in (first, second, other, named))
    assert one.tenant == again.tenant == one.client and len(one.tenant) == 16
    assert "sk-one" not in one.tenant and two.tenant not in ("", one.tenant)
    assert header.tenant == "t"  # the header wins over the credential


async def test_no_tenant_header_configured(simulator: str) -> None:
    async with proxied(simulator, tenant_header="") as proxy, aiohttp.ClientSession() as session:
        rid = await _ask(session, proxy.url, **{"x-tenant-id": "acme"})
    assert proxy.record(rid).tenant == ""


async def test_a_store_without_tenants_upgrades_in_place(tmp_path: Path) -> None:
    store = embedded(tmp_path / "db", schema=False)
    apply_before(store, "005_")
    old_columns = [c for c in REQUEST_COLUMNS if c != "tenant"]
    now = datetime.now(UTC)
    rows = [Record(ts=now, request_id=f"old{i}", route="chat").to_row() for i in range(5)]
    await store.insert("fathom.requests", old_columns, [[r[c] for c in old_columns] for r in rows])
    assert apply_schema(store) == ["005_tenant.sql"]
    new = Record(ts=now, request_id="new", route="chat", tenant="acme").to_row()
    await store.insert("fathom.requests", REQUEST_COLUMNS, [[new[c] for c in REQUEST_COLUMNS]])
    got = store.query_sync(
        "SELECT tenant, count() FROM fathom.requests GROUP BY tenant ORDER BY tenant"
    )
    per_tenant = "SELECT tenant, sum(requests) FROM fathom.{} GROUP BY tenant ORDER BY tenant"
    rollups = [store.query_sync(per_tenant.format(t)) for t in ("speed_1m", "speed_1h")]
    store.close()
    assert got == [("", 5), ("acme", 1)]
    assert rollups == [[("", 5), ("acme", 1)]] * 2  # the rollups keep tenants apart, old rows ''



def test_report_speed_of_one_tenant(tmp_path: Path) -> None:
    # By hand: acme 3 requests (1 failed) at 100 ms TTFT, globex 2 at 500 ms, 1 unnamed at 900.
    traffic = [("acme", 100.0, "")] * 2 + [("acme", 100.0, "upstream_http")]
    traffic += [("globex", 500.0, "")] * 2 + [("", 900.0, "")]
    rows = [
        Record(ts=NOW - timedelta(hours=1), request_id=f"r{i}", route="chat", model="m",
               deployment="d", tenant=tenant, ttft_ms=ttft, error=error).to_row()
        for i, (tenant, ttft, error) in enumerate(traffic)
    ]  # fmt: skip
    with contextlib.closing(embedded(tmp_path / "db")) as store:
        store.insert_sync(
            "fathom.requests", REQUEST_COLUMNS, [[r[c] for c in REQUEST_COLUMNS] for r in rows]
        )

        def speed(tenant: str | None) -> tuple[int, int, float | None]:
            settings = ReportSettings(min_samples=1, tenant=tenant)
            report = build_report_sync(store, NOW, timedelta(hours=6), settings)
            (deployment,) = report.deployments
            ttft = deployment.speed.metric("ttft_ms")
            p50 = ttft.percentiles[0].current if ttft else None
            return deployment.speed.requests, deployment.speed.errors, p50

        assert speed("acme") == (3, 1, 100.0)
        assert speed("globex") == (2, 0, 500.0)
        assert speed("") == (1, 0, 900.0)
        assert speed(None)[:2] == (6, 1)
        markdown = render_markdown(
            build_report_sync(store, NOW, timedelta(hours=6), ReportSettings(tenant="acme"))
        )
    assert "Speed counts user traffic of tenant 'acme' only." in markdown
