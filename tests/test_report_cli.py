"""`fathom report` as a command: files and stdout, progress, exit codes, and the HTML in Chromium.

The HTML check drives Debian's headless `chromium` (installed by `make test`) over the
DevTools protocol: it loads the written file, collects console errors, exceptions and every
network request, measures each chart, and takes a screenshot.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fathom.commands import report as command
from fathom.spawn import fathom_command
from tests.support.polling import until
from tests.support.seeded import NOW, open_seeded, seed_report_extras
from tests.support.store import create, url

CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-port=0", "--window-size=1280,4000",
)  # fmt: skip
DEADLINE_S = 30.0
# What the page reports about itself once loaded: every <img> and every chart's box.
MEASURE_JS = """JSON.stringify({
  images: [...document.images].map(i => ({src: i.src, ok: i.complete && i.naturalWidth > 0})),
  charts: [...document.querySelectorAll('svg')].map(s => {
    const r = s.getBoundingClientRect();
    return {title: s.querySelector('title')?.textContent || '', width: r.width, height: r.height};
  }),
  scripts: document.scripts.length,
  height: document.documentElement.scrollHeight,
})"""


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The seeded store of test_report, closed so that a `fathom report` process can open it."""
    path = tmp_path_factory.mktemp("report-cli") / "db"
    with contextlib.closing(open_seeded(path)) as store:
        seed_report_extras(store)
    yield url(path)


def fathom_report(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run `fathom report` as a user or a CI job would."""
    return subprocess.run(
        fathom_command("report", *argv), capture_output=True, text=True, timeout=60, check=False
    )


def parse(*argv: str) -> argparse.Namespace:
    """Parsed `fathom report` flags."""
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_json_goes_to_stdout_and_progress_to_stderr(store_url: str) -> None:
    done = fathom_report("--store", store_url, "--since", "6h", "--at", NOW.isoformat(),
                         "--format", "json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["schema"] == "fathom.report/1" and len(doc["deployments"]) == 4
    steps = [line for line in done.stderr.splitlines() if line.startswith("fathom report: [")]
    assert "checking the schema" in steps[0] and "rendering json" in steps[7]
    assert len(steps) == 8  # seven to build, one to render; the summary follows
    assert done.stderr.splitlines()[-1].startswith("verdict: llama-8b / q2 is degraded")


def test_an_empty_store_gives_a_report_saying_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = create(tmp_path / "empty")
    out = tmp_path / "empty.md"
    assert command.run(parse("--store", empty, "--out", str(out))) == 0
    assert "**No data**: nothing was measured in this period." in out.read_text()
    assert "no data in this period" in capsys.readouterr().err


def test_unusable_stores_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unreachable = parse("--store", "http://user:secret@127.0.0.1:9/fathom", "--out", "-")
    assert command.run(unreachable) == 2
    err = capsys.readouterr().err
    assert "fathom report: cannot read the store: store unreachable at http://user@127" in err
    assert "secret" not in err
    missing = parse("--store", f"chdb://{tmp_path / 'no-schema'}", "--out", "-")
    assert command.run(missing) == 2
    assert "run `fathom schema apply" in capsys.readouterr().err


def test_format_follows_the_output_name() -> None:
    assert command.output_of(None, None) == ("html", "report.html")
    assert command.output_of("weekly.md", None) == ("md", "weekly.md")
    assert command.output_of(None, "json") == ("json", "-")
    assert command.output_of("-", None) == ("html", "-")


# ------------------------------------------------------------------ the page in Chromium


@dataclass
class Page:
    """A Chromium tab over the DevTools protocol: commands, and the events seen so far."""

    ws: aiohttp.ClientWebSocketResponse
    events: list[dict[str, Any]] = field(default_factory=list)
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    next_id: int = 0

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Run one DevTools command and return its result."""
        self.next_id += 1
        done = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = done
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        reply = await asyncio.wait_for(done, DEADLINE_S)
        assert "error" not in reply, reply
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def read(self) -> None:
        """Route replies to their commands, keep events."""
        async for message in self.ws:
            data = json.loads(message.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            else:
                self.events.append(data)

    async def wait_for(self, method: str) -> None:
        """Until an event of this kind has arrived (polled, with a deadline)."""
        await until(
            lambda: any(e.get("method") == method for e in self.events),
            within=DEADLINE_S, every=0.02, what=f"a {method} event",
        )  # fmt: skip

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions, log errors and requests leaving the file."""
        found = []
        for event in self.events:
            method, params = event.get("method", ""), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append(f"console.{params['type']}: {params['args']}")
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails'].get('text')}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"log: {params['entry']['text']}")
            elif method == "Network.requestWillBeSent":
                url = params["request"]["url"]
                if not url.startswith(("file://", "data:")):
                    found.append(f"fetch: {url}")
        return found


async def _devtools_url(process: asyncio.subprocess.Process) -> str:
    assert process.stderr is not None
    while True:
        line = (await asyncio.wait_for(process.stderr.readline(), DEADLINE_S)).decode()
        assert line, "chromium exited before DevTools listened"
        if line.startswith("DevTools listening on "):
            return line.split(" on ", 1)[1].strip()


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Page]:
    """A headless Chromium with one blank tab, driven over DevTools; stopped afterwards."""
    assert CHROMIUM, "chromium is missing: `make test` installs it (Debian package chromium)"
    process = await asyncio.create_subprocess_exec(
        CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        browser = await _devtools_url(process)
        port = browser.split("//", 1)[1].split("/", 1)[0]
        drain = asyncio.create_task(_drain(process))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{port}/json/list") as listing:
                targets = await listing.json()
            tab = next(t for t in targets if t["type"] == "page")
            async with http.ws_connect(tab["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                reader = asyncio.create_task(page.read())
                for domain in ("Runtime", "Log", "Network", "Page"):
                    await page.send(f"{domain}.enable")
                yield page
                reader.cancel()
        drain.cancel()
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), DEADLINE_S)


async def _drain(process: asyncio.subprocess.Process) -> None:
    # Chromium logs to stderr; an unread pipe would fill and stall it.
    assert process.stderr is not None
    while await process.stderr.read(65536):
        pass


async def load(page: Page, url: str) -> dict[str, Any]:
    """Open `url`, wait for its load event, and measure it."""
    page.events.clear()
    await page.send("Page.navigate", url=url)
    await page.wait_for("Page.loadEventFired")
    result = await page.send("Runtime.evaluate", expression=MEASURE_JS, returnByValue=True)
    measured: dict[str, Any] = json.loads(result["result"]["value"])
    return measured


async def test_the_html_report_renders_in_chromium(store_url: str, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    done = fathom_report("--store", store_url, "--since", "6h", "--at", NOW.isoformat(),
                         "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stderr
    broken = tmp_path / "broken.html"
    broken.write_text(
        "<html><body><img src='missing.png'><svg width='0' height='0'></svg>"
        "<script>console.error('boom')</script></body></html>"
    )
    async with chromium(tmp_path / "profile") as page:
        measured = await load(page, out.as_uri())
        problems = page.problems()
        full = {"x": 0, "y": 0, "width": 1280, "height": measured["height"], "scale": 1}
        shot = await page.send(
            "Page.captureScreenshot", format="png", clip=full, captureBeyondViewport=True
        )
        (tmp_path / "report.png").write_bytes(base64.b64decode(shot["data"]))
        # The same checks must catch a broken page, or they prove nothing.
        bad = await load(page, broken.as_uri())
        bad_problems = page.problems()
    assert problems == []
    assert measured["scripts"] == 0 and measured["images"] == []
    titles = [c["title"] for c in measured["charts"]]
    assert len(titles) == 7, titles  # 2 Pareto, 3 speed, 2 quality
    assert all(c["width"] > 100 and c["height"] > 100 for c in measured["charts"]), measured
    assert (tmp_path / "report.png").stat().st_size > 50_000
    assert [i["ok"] for i in bad["images"]] == [False]
    assert bad["charts"][0]["width"] == 0
    assert any("boom" in p for p in bad_problems)
