"""Each degradation-zoo member, end to end: sound traffic, then the member takes over one
deployment mid-run while a control deployment stays sound.

Real processes throughout: a `fathom simulate` process serves one model per deployment, the
real `fathom serve --probes` samples every answer, re-asks, sends canaries from the start (the
routes name every deployment) and runs detection; then `fathom check` judges the run, the
stored `fathom.regressions` are read, and the provisioned Grafana alert rules are evaluated on
the store with the plugin's macros. The canaries are a golden file written here, with answers
computed here; the simulator computes its own (fathom.sim.answers.solve).

The default suite runs three members (one per way of being caught); `-m slow` runs them all.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import openai
import pytest
import yaml

from fathom import spawn
from fathom.sim.zoo import MEMBERS
from sidecar.store.client import open_store
from tests.support.canaries import golden_file
from tests.support.grafana_alerts import firing, named, rules
from tests.support.processes import serve_command, simulate_command
from tests.support.scrape import counters_reach, metric
from tests.support.store import url as store_url

MODEL = "zoo"
CONTROL = "control"
BASELINE = 70  # sampled answers per deployment before the switch (detection needs 64)
AFTER = 40  # sampled answers per deployment after it
ROUND = 16  # canaries per round: the whole golden file below


@dataclass
class Run:
    """What one run left behind: the check's output and exit code, the store's findings."""

    check_code: int
    check_output: str
    recorded: set[tuple[str, str]]  # (deployment, probe) rows of fathom.regressions
    alerts: set[tuple[str, ...]]  # (deployment, rule uid) instances that fire
    store: str


def models(members: tuple[str, ...]) -> list[dict[str, object]]:
    """One simulated model per deployment: answers at once, 12 content events of filler."""
    common = {"ttft_ms": 0, "itl_ms": 0, "tokens": 12}
    return [{"name": f"{MODEL}-{d}", **common} for d in (*members, CONTROL)]


def serve_config(tmp: Path, sim: str, members: tuple[str, ...]) -> Path:
    """`fathom serve --probes` settings: every answer sampled, short canary cycles. Detection
    is left to `fathom detect` after the run (as the detection CronJob runs it), with its
    window starting at the switch: the worker's own timer would judge whatever window its
    busy loop happened to leave."""
    routes = [
        {"model": f"{MODEL}-{d}", "upstreams": [{"url": sim, "deployment": d}]}
        for d in (*members, CONTROL)
    ]
    settings = {
        "routes": routes, "sample_rate": 1.0, "probe_k": 2, "probe_requests_per_min": 1e6,
        "probe_tokens_per_min": 1e9, "probe_idle_s": 0.2, "probe_concurrency": 8,
        "canary_default": False, "canary_files": [str(golden_file(tmp / "golden.jsonl"))],
        "canaries_per_round": ROUND, "canary_interval_s": 2.0, "detect_interval_s": 3600.0,
        "writer_flush_s": 0.1, "spool_dir": str(tmp / "spool"),
    }  # fmt: skip
    path = tmp / "fathom.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


async def traffic(proxy: str, deployments: tuple[str, ...], count: int, start: int) -> None:
    """`count` user questions to each deployment's model (distinct prompts)."""
    client = openai.AsyncOpenAI(base_url=proxy + "/v1", api_key="sk-user", max_retries=0)
    limit = asyncio.Semaphore(16)

    async def ask(deployment: str, i: int) -> None:
        async with limit:
            await client.chat.completions.create(
                model=f"{MODEL}-{deployment}", max_tokens=64,
                messages=[{"role": "user", "content": f"Tell me about topic {i} please."}],
            )  # fmt: skip

    await asyncio.gather(*(ask(d, i) for d in deployments for i in range(start, start + count)))
    await client.close()


async def switch(sim: str, members: tuple[str, ...]) -> None:
    """Each member takes over its deployment's answers from now on."""
    async with aiohttp.ClientSession() as session:
        for member in members:
            body = {"model": f"{MODEL}-{member}", "member": member}
            async with session.post(sim + "/sim/zoo", json=body) as resp:
                assert resp.status == 200, await resp.text()


async def drive(serve: spawn.Child, sim: str, members: tuple[str, ...]) -> datetime:
    """Sound phase, switch, degraded phase; returns the switch time."""
    deployments = (*members, CONTROL)
    proxy, admin = serve.addresses["proxy"], serve.addresses["admin"]
    n = len(deployments)
    await traffic(proxy, deployments, BASELINE, 0)
    # Every sample scored, and every deployment canaried twice (a baseline per item).
    scored, sent = "fathom_probes_samples_scored_total", "fathom_probes_canaries_sent_total"
    await counters_reach(admin, {scored: n * BASELINE, sent: 2 * ROUND * n}, 240)
    await asyncio.sleep(1.0)  # rows written before the switch are older than it
    switched = datetime.now(UTC)
    await switch(sim, members)
    before = await metric(admin, sent)
    await traffic(proxy, deployments, AFTER, BASELINE)
    await counters_reach(admin, {scored: n * (BASELINE + AFTER), sent: before + 3 * ROUND * n}, 240)
    return switched


def judge(store: str, switched: datetime) -> Run:
    """`fathom detect` (findings in fathom.regressions), `fathom check` and the alert rules, all
    as of six hours after the switch: their six-hour window is then exactly the degraded
    phase, and the baseline everything before it (nothing arrives later)."""
    at = switched + timedelta(hours=6)
    detect = spawn.fathom_command("detect", "--store", store, "--at", at.isoformat())
    found = subprocess.run(detect, capture_output=True, text=True, timeout=300, env=os.environ)
    assert found.returncode == 0, found.stderr
    argv = spawn.fathom_command("check", "--store", store, "--since", "6h", "--at", at.isoformat())
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=os.environ)
    opened = open_store(store)
    try:
        rows = opened.query_sync("SELECT DISTINCT deployment, probe FROM fathom.regressions")
        alerts: set[tuple[str, ...]] = set()
        for uid in ("fathom-quality-regression", "fathom-canary-pass-rate"):
            alerts |= {(d, uid) for (d,) in named(firing(opened, rules()[uid], at), "deployment")}
    finally:
        opened.close()
    recorded = {(str(d), str(p)) for d, p in rows}
    return Run(done.returncode, done.stdout + done.stderr, recorded, alerts, store)


def zoo_run(tmp: Path, members: tuple[str, ...]) -> Run:
    """Simulator and serve processes for one run; both stopped before judging."""
    sim_config = tmp / "models.yaml"
    sim_config.write_text(yaml.safe_dump({"seed": 11, "models": models(members)}))
    store = store_url(tmp / "db")
    with spawn.running(simulate_command("--config", str(sim_config)), ["server"]) as sim:
        url = sim.addresses["server"]
        serve_argv = serve_command(
            url, store, "--probes", "--config", str(serve_config(tmp, url, members)),
            "--log-level", "WARNING",
        )  # fmt: skip
        with spawn.running(serve_argv, ["proxy", "admin"]) as serve:
            switched = asyncio.run(drive(serve, url, members))
    return judge(store, switched)


def check_lines(run: Run) -> dict[str, list[str]]:
    """The check's table rows by deployment."""
    by: dict[str, list[str]] = {}
    for line in run.check_output.splitlines():
        cells = line.split()
        if cells and cells[0] in (*MEMBERS, CONTROL):
            by.setdefault(cells[0], []).append(line)
    return by


def assert_caught(run: Run, members: tuple[str, ...]) -> None:
    """Each member is found by the check, the detector and an alert rule; the control by none."""
    print(run.check_output, sorted(run.recorded), sorted(run.alerts), sep="\n")  # pytest -s
    assert run.check_code == 1, run.check_output
    lines = check_lines(run)
    for member in members:
        flagged = [line for line in lines.get(member, []) if "REGRESSION" in line]
        assert flagged, f"{member} not flagged by fathom check:\n{run.check_output}"
        assert any(p in line for line in flagged for p in PROBES), flagged
        assert any(d == member for d, _ in run.recorded), (member, run.recorded)
        assert any(d == member for d, _ in run.alerts), (member, run.alerts)
    assert not any("REGRESSION" in line for line in lines.get(CONTROL, [])), run.check_output
    assert not any(d == CONTROL for d, _ in run.recorded), run.recorded
    assert not any(d == CONTROL for d, _ in run.alerts), run.alerts


PROBES = ("consistency", "factuality", "degeneration", "abstention")
# One member per way of being caught: by every probe at once, by degeneration alone (its
# content is the sound one), by the canaries alone (it answers users as before).
DEFAULT_MEMBERS = ("abstain", "verbose", "wrong")


def test_zoo_members_are_caught_end_to_end(tmp_path: Path) -> None:
    assert_caught(zoo_run(tmp_path, DEFAULT_MEMBERS), DEFAULT_MEMBERS)


@pytest.mark.slow
def test_every_zoo_member_is_caught_end_to_end(tmp_path: Path) -> None:
    assert_caught(zoo_run(tmp_path, MEMBERS), MEMBERS)
