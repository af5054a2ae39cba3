"""`fathom probe` as a process (worker index checks, missing tables, SIGTERM), and the settings
it reads."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from fathom import settings as config
from fathom import spawn
from fathom.commands.probe import without_blanks
from fathom.settings import build
from probes.probe_settings import worker_index
from sidecar.config import ConfigError
from tests.support.processes import probe_command, simulated_models
from tests.support.records import seed_samples
from tests.support.store import opened


class Process:
    """A child process whose merged output is read line by line as it comes."""

    def __init__(self, argv: list[str], env: Mapping[str, str]) -> None:
        self.popen = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "FATHOM_PROBE_ADMIN": "127.0.0.1:0", **env},
        )  # fmt: skip
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._queue.put(line.rstrip())
        self._queue.put(None)

    def wait_for(self, pattern: str, within: float = 30.0) -> re.Match[str]:
        """The first line (from here on) matching `pattern`; fails on timeout or exit."""
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r}; output:\n" + "\n".join(self.lines))

    def stop(self) -> int:
        """SIGTERM, then the exit status (killed after 30 s)."""
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with simulated_models(tmp_path_factory.mktemp("sim")) as url:
        yield url


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


def test_index_not_below_count_exits_2(tmp_path: Path) -> None:
    env = {**os.environ, "FATHOM_WORKER_INDEX": "3", "FATHOM_WORKER_COUNT": "3"}
    argv = probe_command(tmp_path / "db", "http://127.0.0.1:9")
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "probe worker index 3 is not within 0..2" in done.stderr
    assert "FATHOM_WORKER_COUNT must equal" in done.stderr
    missing = subprocess.run(
        spawn.fathom_command("probe", "--store", f"chdb://{tmp_path / 'db'}"),
        env={k: v for k, v in os.environ.items() if k != "FATHOM_UPSTREAM"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 2 and "no upstream" in missing.stderr


def test_missing_schema_is_named_and_sigterm_exits_0(
    tmp_path: Path, processes: list[Process]
) -> None:
    env = {"FATHOM_WORKER_INDEX": "", "HOSTNAME": "fathom-probe-worker-0"}
    process = Process(probe_command(tmp_path / "db", "http://127.0.0.1:9"), env)
    processes.append(process)
    admin = process.wait_for(r"admin listening on (\S+)").group(1)
    match = process.wait_for(r"at schema version 0, this release needs \d+ \(missing (.*?)\)")
    with urllib.request.urlopen(admin + "/healthz", timeout=10) as health:
        assert health.status == 200  # waiting for the schema is alive, not stuck
    assert match.group(1).startswith("001_init.sql")
    assert "fathom schema apply" in process.lines[-1]
    assert "checking again in" in process.lines[-1]
    assert process.stop() == 0
    with opened(tmp_path / "db") as store:
        tables = store.query_sync("SELECT name FROM system.tables WHERE database = 'fathom'")
    assert tables == []  # the worker checked, and created nothing


async def test_scores_samples_then_exits_0_on_sigterm(
    sim: str, tmp_path: Path, processes: list[Process]
) -> None:
    path = tmp_path / "db"
    with opened(path, schema=True) as store:
        ids = await seed_samples(store, sim, "steady", 3)
    # Closed: one process owns an embedded store, and now it is the worker's turn.
    env = {
        "FATHOM_PROBE_K": "2", "FATHOM_CANARIES_PER_ROUND": "0", "FATHOM_PROBE_IDLE_S": "0.2",
        "FATHOM_SCORER_DEVICE": "cpu", "FATHOM_WORKER_COUNT": "1",
    }  # fmt: skip
    process = Process(probe_command(path, sim), env)
    processes.append(process)
    admin = process.wait_for(r"admin listening on (\S+)").group(1)
    process.wait_for(r"scorer ready: device=cpu .* sentences/s", within=60)
    process.wait_for(r"probe worker 0/1 round \d+: 3 samples scored \(3 with consistency")
    metrics = await asyncio.to_thread(scrape, admin + "/metrics")
    assert re.search(r"^fathom_probes_samples_scored_total\{.*\} 3\.0$", metrics, re.M), metrics
    assert re.search(r"^fathom_probes_rounds_total\{.*\} [1-9]", metrics, re.M)
    assert await asyncio.to_thread(process.stop) == 0
    process.wait_for(r"probe worker 0/1 stopped: 3 samples scored \(3 with consistency")
    with opened(path) as store:
        rows = store.query_sync(
            "SELECT request_id, probe, count() FROM fathom.quality GROUP BY request_id, probe"
        )
    assert sorted(rows) == sorted(
        (i, p, 1) for i in ids for p in ("abstention", "consistency", "degeneration")
    )


# ---------------------------------------------------------------------------- settings


def test_worker_index_from_settings_env_or_hostname() -> None:
    assert worker_index(2, 3, "whatever") == 2
    assert worker_index(-1, 3, "fathom-probe-worker-2") == 2
    assert worker_index(-1, 1, "fathom-7c9d8-12") == 0  # alone: a hostname suffix is no ordinal
    with pytest.raises(ConfigError, match="set FATHOM_WORKER_INDEX"):
        worker_index(-1, 3, "laptop")
    env = without_blanks({"FATHOM_WORKER_INDEX": " ", "FATHOM_WORKER_COUNT": "4", "HOME": ""})
    assert env == {"FATHOM_WORKER_COUNT": "4", "HOME": ""}
    settings = config.load(None, env)
    probe = settings.probe_worker("fathom-probe-worker-3")
    assert (probe.worker_index, probe.worker_count) == (3, 4)
    with pytest.raises(ConfigError, match=r"index 4 is not within 0\.\.3"):
        settings.probe_worker("fathom-probe-worker-4")


def test_probe_settings_from_env_and_yaml(tmp_path: Path) -> None:
    path = tmp_path / "fathom.yaml"
    path.write_text("canary_files: [a.jsonl, b.jsonl]\nprobe_k: 3\nscorer_device: cpu\n")
    env = {"FATHOM_CONFIG": str(path), "FATHOM_PROBE_TOKENS_PER_MIN": "500"}
    settings = config.load(None, env)
    worker = settings.worker
    assert worker.canary_files == ("a.jsonl", "b.jsonl") and worker.k == 3
    assert worker.tokens_per_min == 500.0 and settings.scorer.device == "cpu"
    from_env = config.load(None, {"FATHOM_CANARY_FILES": " x.jsonl, ,y.jsonl "})
    assert from_env.worker.canary_files == ("x.jsonl", "y.jsonl")
    shown = repr(build(probe_api_key="sk-secret", probe_token="tok-secret"))
    assert "api_key" not in shown and "sk-secret" not in shown and "tok-secret" not in shown
    with pytest.raises(ConfigError, match="probe_k"):
        config.load(None, {"FATHOM_PROBE_K": "many"})
    with pytest.raises(ConfigError, match="k=0 must be > 0"):
        config.load(None, {"FATHOM_PROBE_K": "0"})
