"""Shared fixtures, thin wrappers over tests/support: an embedded store, a real simulator
process, the session's scorer, kubectl, and the fake Grafana."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fathom import spawn
from probes.scorer import Scorer, ScorerConfig, load_scorer
from sidecar.store.client import Store
from tests.support import deploy, fake_grafana
from tests.support.processes import simulate_command
from tests.support.store import embedded

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """An embedded store in this test's directory, with the schema applied (a module that
    needs another kind of store defines its own `store`)."""
    opened = embedded(tmp_path / "db")
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def simulator_process() -> Iterator[spawn.Child]:
    """A `fathom simulate` process: model 'sim', 30 ms TTFT, 10 ms ITL, 8 tokens."""
    argv = simulate_command("--model", "sim", "--ttft-ms", "30", "--itl-ms", "10", "--tokens", "8")
    with spawn.running(argv, ["server"]) as child:
        yield child


@pytest.fixture(scope="session")
def simulator(simulator_process: spawn.Child) -> str:
    """Base URL of the session's simulator."""
    return simulator_process.addresses["server"]


@pytest.fixture(scope="session")
def scorer() -> Iterator[Scorer]:
    """The one CPU scorer of this test session (loaded on first use)."""
    loaded = load_scorer(ScorerConfig(device="cpu", batch_size=32, warmup_sentences=16))
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def kubectl() -> str:
    """A kubectl whose kustomize renders deploy/ (see tests.support.deploy.kubectl)."""
    return deploy.kubectl()


@pytest.fixture
async def grafana_server() -> AsyncIterator[tuple[str, fake_grafana.FakeGrafana]]:
    """The fake Grafana on a free port of 127.0.0.1, stopped after the test."""
    async with fake_grafana.serving() as served:
        yield served


@pytest.fixture
def children() -> Iterator[list[spawn.Child]]:
    """Processes a test starts; killed at its end, whatever happened."""
    started: list[spawn.Child] = []
    yield started
    for child in started:
        child.stop(signal.SIGKILL)
