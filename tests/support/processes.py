"""`fathom` processes as the tests and benches start them: on free loopback ports, on an
embedded store in a directory of the caller's."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import psutil
import yaml

from fathom import spawn
from tests.support.store import url

# Simulated models, knowing no golden file (they compute the canaries of tests.support.canaries):
# 'steady' repeats itself and is right, 'flaky' says something new each time, 'wrong'
# repeats itself but errs, 'slow' is late to answer.
MODELS = [
    {"name": "steady", "consistency": 1.0, "accuracy": 0.95},
    {"name": "flaky", "consistency": 0.0, "accuracy": 0.95},
    {"name": "wrong", "consistency": 1.0, "accuracy": 0.2},
    {"name": "slow", "ttft_ms": 600},
]


def simulate_command(*flags: str, port: int = 0) -> list[str]:
    """argv of a quiet `fathom simulate` on 127.0.0.1 (`port`, or a free one), with `flags`."""
    return spawn.fathom_command(
        "simulate", "--listen", f"127.0.0.1:{port}", "--log-level", "WARNING", *flags
    )


@contextlib.contextmanager
def simulated_models(directory: Path) -> Iterator[str]:
    """A simulator serving MODELS, answering at once (12-word answers); its base URL."""
    path = directory / "models.yaml"
    common = {"ttft_ms": 0, "itl_ms": 0, "tokens": 12}
    path.write_text(yaml.safe_dump({"seed": 7, "models": [{**common, **m} for m in MODELS]}))
    with spawn.running(simulate_command("--config", str(path)), ["server"]) as child:
        yield child.addresses["server"]


def serve_flags(upstream: str, store: Path | str) -> list[str]:
    """`fathom serve` flags: in front of `upstream`, proxy and admin on free loopback ports,
    on the embedded store at `store` (a path) or the store URL `store` (a string)."""
    return [
        "--upstream", upstream, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
        "--store", store if isinstance(store, str) else url(store),
    ]  # fmt: skip


def serve_command(upstream: str, store: Path | str, *flags: str) -> list[str]:
    """argv of `fathom serve` with `serve_flags()` and `flags`."""
    return spawn.fathom_command("serve", *serve_flags(upstream, store), *flags)


def serve(upstream: str, store: Path | str, spool: Path, *flags: str, **env: str) -> spawn.Child:
    """`fathom serve` (see `serve_command`) spooling to `spool`, with FATHOM_* `env`; the child
    once both its proxy and its admin port listen."""
    env = {"FATHOM_SPOOL_DIR": str(spool), **env}
    return spawn.start(serve_command(upstream, store, *flags), ["proxy", "admin"], env)


def probe_command(store: Path, upstream: str, *flags: str) -> list[str]:
    """argv of `fathom probe` on the embedded store at `store`, re-asking through `upstream`."""
    return spawn.fathom_command("probe", "--store", url(store), "--upstream", upstream, *flags)


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its descendants."""
    total = 0.0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total
