"""The weekly report on Kubernetes: a dated file per run, handed out read-only by
`fathom reports` (a real process over a real report written by `fathom report`)."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp

from fathom import spawn
from fathom.cli import main
from tests.support.store import create


async def test_dated_reports_are_served_read_only(tmp_path: Path) -> None:
    url = create(tmp_path / "db")
    reports = tmp_path / "reports"
    reports.mkdir()
    out = str(reports / "fathom-{date}.html")
    for week in ("2026-11-23T06:00", "2026-11-30T06:00"):
        assert main(["report", "--store", url, "--out", out, "--at", week]) == 0
    names = sorted(p.name for p in reports.iterdir())
    assert names == ["fathom-2026-11-23.html", "fathom-2026-11-30.html"]  # none overwritten
    (tmp_path / "secret.txt").write_text("not a report")
    os.symlink(tmp_path / "secret.txt", reports / "link.html")
    argv = spawn.fathom_command("reports", "--dir", str(reports), "--listen", "127.0.0.1:0")
    with spawn.running(argv, ["server"]) as server:
        base = server.addresses["server"]
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/") as index:
                listing = await index.text()
            assert index.status == 200 and "fathom-2026-11-30.html" in listing
            async with session.get(base + "/fathom-2026-11-30.html") as page:
                assert page.status == 200 and "<html" in (await page.text()).lower()
            async with session.put(base + "/fathom-2026-11-30.html", data=b"x") as put:
                assert put.status == 405
            for escape in ("/link.html", "/..%2fsecret.txt", "/../secret.txt"):
                async with session.get(base + escape) as outside:
                    assert outside.status in (403, 404), escape
                    assert "not a report" not in await outside.text()
            async with session.get(base + "/healthz") as health:
                assert health.status == 200
