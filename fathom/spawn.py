"""Start `fathom` commands as child processes and learn the addresses they bound.

Used by `fathom demo`, the benches and the tests: a server started on port 0 prints
`NAME listening on URL` lines, which are read here before the caller goes on.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

_LISTENING = re.compile(r"^(?:(\w+) )?listening on (\S+)$")  # unnamed: "server"


class SpawnError(RuntimeError):
    """A child process did not come up; the message holds the end of its output."""


@dataclass(slots=True)
class Child:
    """A running child process and the addresses it announced (name -> URL)."""

    process: subprocess.Popen[str]
    addresses: dict[str, str]
    output: deque[str]  # the last lines the child printed, kept drained so it never blocks

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the child and wait for it; kill it if it outlives `timeout`."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fathom_command(*args: str) -> list[str]:
    """argv for running `fathom ARGS` with this interpreter."""
    return [sys.executable, "-m", "fathom.cli", *args]


def start(
    argv: Sequence[str],
    expect: Sequence[str],
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Child:
    """Start argv and wait until it has printed `NAME listening on URL` for each expected name."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env
    )
    child = Child(process, {}, deque(maxlen=500))
    announced = threading.Event()
    reader = threading.Thread(target=_read, args=(child, set(expect), announced), daemon=True)
    reader.start()
    # The reader also sets the event at end of output, so a crash is noticed at once.
    announced.wait(timeout)
    if not set(expect) <= set(child.addresses):
        child.stop(signal.SIGKILL)
        reader.join(5)
        tail = "\n".join(list(child.output)[-20:])
        raise SpawnError(f"{' '.join(argv)} did not announce {list(expect)}:\n{tail}")
    return child


def _read(child: Child, expect: set[str], announced: threading.Event) -> None:
    """Keep the child's output drained (so it never blocks) and note what it announces."""
    assert child.process.stdout is not None
    for line in child.process.stdout:
        child.output.append(line.rstrip())
        if match := _LISTENING.match(line.strip()):
            child.addresses[match.group(1) or "server"] = match.group(2)
            if expect <= set(child.addresses):
                announced.set()
    announced.set()


@contextlib.contextmanager
def running(
    argv: Sequence[str], expect: Sequence[str], env: Mapping[str, str] | None = None
) -> Iterator[Child]:
    """`start()` as a context manager that always stops the child."""
    child = start(argv, expect, env)
    try:
        yield child
    finally:
        child.stop()
